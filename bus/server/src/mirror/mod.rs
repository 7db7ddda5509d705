//! Edge-to-hub mirrors: store-and-forward from a local topic to a topic on
//! a remote broker, run by the edge (the hub never dials the edge).
//!
//! ```text
//!  edge                                                     hub
//!  topic ──reader (≤ HW)──▶ link task ──QUIC── MirrorOpen ──▶ create + bind destination,
//!    ▲                       │  ▲                            answer log ends
//!    │ notifier              │  └── Offset ◀── MirrorAppend ─▶ writer: append at the
//!  producers                 │     (stored batches,            log end only, one
//!                            ▼      compressed, paced)         durable transaction
//!            redb: definition + progress
//! ```
//!
//! Without a plugin on the link the hub's copy is offset-preserving: every
//! append carries stored edge batches unchanged and names the offset it
//! starts at, which the hub accepts only at its log end. A resend after a
//! lost ack therefore meets `MirrorOffsetMismatch`, and the link asks the
//! hub's log ends again and resumes there: nothing is lost, nothing is
//! appended twice. The hub is the truth about what was delivered; the
//! progress the edge stores is what `mirror describe` shows across restarts.
//!
//! ## Layout
//!
//! - this file: [`Mirrors`], the definitions (in the edge's redb, under
//!   [`ConfigKind::Mirror`]), admin requests, and [`MirrorConfig`];
//! - [`link`]: one task per mirror: dial, open, stream, back off;
//! - [`pace`]: the bandwidth cap.

pub mod link;
pub mod pace;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use edgebus_proto::ErrorCode;
use edgebus_proto::compression::Compression;
use edgebus_proto::frame::{
    FailurePolicy, MirrorDescription, MirrorPartition, MirrorSpec, PluginRef, Response,
};
use edgebus_store::{ConfigKind, LogStore, RetentionHold, StoreError};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::attach::Attachments;
use crate::dlq::DeadLetters;
use crate::error::Coded;
use crate::notify::Notifier;
use crate::reader::Reader;
use crate::registry::Registry;
use crate::topics::Topics;
use crate::writer::Writer;

/// `[mirror]` in the broker's configuration: how an edge runs its links.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorConfig {
    /// QUIC keep-alive on a mirror link, in milliseconds: often enough that
    /// a cellular NAT keeps the binding.
    pub keep_alive_ms: u64,
    /// A link with no packet for this long is dead and redialled.
    pub idle_timeout_ms: u64,
    /// A dial or open that takes longer fails and backs off.
    pub connect_timeout_ms: u64,
    /// First backoff after a failure; doubled per failure, with jitter.
    pub backoff_initial_ms: u64,
    /// Cap of the backoff.
    pub backoff_max_ms: u64,
    /// Stored batch bytes one append carries at most (at least one batch).
    pub max_request_bytes: u32,
    /// `mirror.max_backlog_bytes`: retention keeps a mirror's undelivered
    /// records while their partition holds at most this many bytes; past
    /// it the oldest undelivered batches are deleted, counted (`mirror
    /// describe`) and logged, and the hub's copy skips their offsets.
    pub max_backlog_bytes: u64,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            keep_alive_ms: 5_000,
            idle_timeout_ms: 30_000,
            connect_timeout_ms: 10_000,
            backoff_initial_ms: 250,
            backoff_max_ms: 30_000,
            max_request_bytes: 1 << 20,
            max_backlog_bytes: 1 << 30,
        }
    }
}

/// Why a mirror admin request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MirrorError {
    /// No such mirror.
    #[error("unknown mirror {0:?}")]
    Unknown(String),
    /// A mirror with that name exists.
    #[error("mirror {0:?} exists")]
    Exists(String),
    /// The definition is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Coded for MirrorError {
    fn code(&self) -> ErrorCode {
        match self {
            MirrorError::Unknown(_) => ErrorCode::UnknownMirror,
            MirrorError::Exists(_) => ErrorCode::MirrorExists,
            MirrorError::Invalid(_) => ErrorCode::InvalidRequest,
            MirrorError::Store(e) => e.code(),
        }
    }
}

/// A mirror as stored in the edge's redb: its definition and progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    /// The identity the hub binds the destination to: the name and a
    /// random suffix, so a mirror deleted and created again under the name
    /// (whose source offsets may differ) cannot append to the old copy.
    id: String,
    name: String,
    topic: String,
    to: String,
    to_topic: String,
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
    max_bytes_per_s: u64,
    compression: String,
    /// The link's plugins, `(name, params)`: empty for an offset-preserving
    /// copy.
    chain: Vec<(String, Vec<(String, String)>)>,
    /// The chain's failure policy, as its wire number.
    on_failure: u8,
    paused: bool,
    /// Per source partition, the hub's log end as last heard.
    delivered: BTreeMap<u32, u64>,
    /// Records the hub's copy skips: deleted on the edge past the backlog
    /// cap before the hub had them (counted when the hub skips them, so
    /// exactly what its copy misses).
    skipped_records: u64,
    /// Bytes of the batches retention deleted past the cap.
    dropped_bytes: u64,
}

impl Stored {
    fn compression(&self) -> Compression {
        self.compression.parse().unwrap_or_default()
    }

    fn chain(&self) -> Vec<PluginRef> {
        self.chain
            .iter()
            .map(|(name, params)| PluginRef {
                name: name.clone(),
                params: params.clone(),
            })
            .collect()
    }

    fn on_failure(&self) -> FailurePolicy {
        match self.on_failure {
            0 => FailurePolicy::Skip,
            2 => FailurePolicy::Halt,
            _ => FailurePolicy::DeadLetter,
        }
    }
}

/// What a link is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Dialling and opening.
    Connecting,
    /// Streaming.
    Connected,
    /// Waiting after a failure until this time (ms since the epoch).
    BackingOff {
        /// Next attempt.
        until_ms: i64,
    },
    /// Paused by an operator.
    Paused,
    /// Stopped until an operator acts: the hub refuses the mirror for good
    /// (its destination is another's, say).
    Halted,
}

impl LinkState {
    fn name(&self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::BackingOff { .. } => "backing-off",
            LinkState::Paused => "paused",
            LinkState::Halted => "halted",
        }
    }
}

/// One mirror's live state, shared by its link task and admin requests.
pub struct Shared {
    stored: Mutex<Stored>,
    status: Mutex<(LinkState, String)>,
    /// Link payload bytes sent.
    pub bytes_sent: AtomicU64,
    /// Stored batch bytes those payloads carried.
    pub batch_bytes_sent: AtomicU64,
    /// Records the hub acknowledged.
    pub records_sent: AtomicU64,
}

impl Shared {
    fn stored(&self) -> std::sync::MutexGuard<'_, Stored> {
        self.stored.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_status(&self, state: LinkState, detail: impl Into<String>) {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner) = (state, detail.into());
    }

    fn status(&self) -> (LinkState, String) {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The broker parts a mirror uses.
#[derive(Clone)]
pub(crate) struct Env {
    pub(crate) store: Arc<dyn LogStore>,
    pub(crate) writer: Writer,
    pub(crate) reader: Reader,
    pub(crate) notifier: Notifier,
    pub(crate) topics: Topics,
    pub(crate) registry: Arc<Registry>,
    pub(crate) attachments: Arc<Attachments>,
    pub(crate) dead_letters: DeadLetters,
    pub(crate) config: MirrorConfig,
}

/// The broker parts mirrors use.
pub struct MirrorParts {
    /// The store (definitions and progress).
    pub store: Arc<dyn LogStore>,
    /// The writer.
    pub writer: Writer,
    /// Reads of source partitions.
    pub reader: Reader,
    /// Wakes links when partitions grow.
    pub notifier: Notifier,
    /// The topic catalog.
    pub topics: Topics,
    /// Plugins for filtered links.
    pub registry: Arc<Registry>,
    /// Read-path counters a filtered link counts into.
    pub attachments: Arc<Attachments>,
    /// Dead letters of a filtered link.
    pub dead_letters: DeadLetters,
}

struct Running {
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

/// The edge's mirrors. Cheap to clone.
#[derive(Clone)]
pub struct Mirrors {
    env: Env,
    running: Arc<Mutex<HashMap<String, Running>>>,
}

impl Mirrors {
    /// Mirrors over the broker's parts; none run until [`Mirrors::restore`].
    pub fn new(parts: MirrorParts, config: MirrorConfig) -> Mirrors {
        Mirrors {
            env: Env {
                store: parts.store,
                writer: parts.writer,
                reader: parts.reader,
                notifier: parts.notifier,
                topics: parts.topics,
                registry: parts.registry,
                attachments: parts.attachments,
                dead_letters: parts.dead_letters,
                config,
            },
            running: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Loads the stored mirrors and starts those not paused. A definition
    /// that does not decode is logged and skipped, not fatal: the rest of
    /// the broker serves on.
    pub fn restore(&self) -> Result<(), StoreError> {
        for (name, blob) in self.env.store.configs(ConfigKind::Mirror)? {
            match serde_json::from_slice::<Stored>(&blob) {
                Ok(stored) => self.start(stored),
                Err(e) => tracing::error!(mirror = %name, error = %e, "stored mirror unreadable"),
            }
        }
        Ok(())
    }

    fn start(&self, stored: Stored) {
        let name = stored.name.clone();
        let paused = stored.paused;
        let shared = Arc::new(Shared {
            stored: Mutex::new(stored),
            status: Mutex::new((LinkState::Connecting, String::new())),
            bytes_sent: AtomicU64::new(0),
            batch_bytes_sent: AtomicU64::new(0),
            records_sent: AtomicU64::new(0),
        });
        let task = if paused {
            shared.set_status(LinkState::Paused, "");
            None
        } else {
            Some(tokio::spawn(link::run(self.env.clone(), shared.clone())))
        };
        self.lock().insert(name, Running { shared, task });
    }

    /// Stops every link (at shutdown).
    pub async fn stop_all(&self) {
        let tasks: Vec<JoinHandle<()>> = self
            .lock()
            .values_mut()
            .filter_map(|r| r.task.take())
            .collect();
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
    }

    /// `MirrorCreate`.
    pub async fn create(&self, spec: MirrorSpec) -> Result<Response, MirrorError> {
        let invalid = |m: String| -> Result<(), MirrorError> { Err(MirrorError::Invalid(m)) };
        edgebus_store::topic::check_name(&spec.name)
            .or_else(|e| invalid(format!("mirror name: {e}")))?;
        if self.lock().contains_key(&spec.name) {
            return Err(MirrorError::Exists(spec.name));
        }
        if self.env.topics.spec(&spec.topic).is_err() {
            invalid(format!("unknown source topic {:?}", spec.topic))?;
        }
        edgebus_store::topic::check_name(&spec.to_topic)
            .or_else(|e| invalid(format!("destination topic: {e}")))?;
        if !spec.compression.is_supported() {
            invalid(format!(
                "{} compression is not supported on a link: use zstd, lz4 or none",
                spec.compression
            ))?;
        }
        let text = |b: &[u8], what: &str| {
            String::from_utf8(b.to_vec())
                .map_err(|_| MirrorError::Invalid(format!("{what} is not PEM text")))
        };
        let stored = Stored {
            id: format!("{}@{:016x}", spec.name, random_u64()),
            name: spec.name.clone(),
            topic: spec.topic,
            to: spec.to,
            to_topic: spec.to_topic,
            ca_pem: text(&spec.ca_pem, "the CA")?,
            cert_pem: text(&spec.cert_pem, "the certificate")?,
            key_pem: text(&spec.key_pem, "the key")?,
            max_bytes_per_s: spec.max_bytes_per_s,
            compression: spec.compression.name().to_owned(),
            chain: spec
                .chain
                .iter()
                .map(|p| (p.name.clone(), p.params.clone()))
                .collect(),
            on_failure: spec.on_failure as u8,
            paused: false,
            delivered: BTreeMap::new(),
            skipped_records: 0,
            dropped_bytes: 0,
        };
        // Check the TLS material now: a typo is an error here, not a link
        // that backs off forever.
        link::client_config(&stored, &self.env.config).map_err(MirrorError::Invalid)?;
        if !spec.chain.is_empty() {
            // A plugin that is missing or does not initialise is refused
            // here, as `pipeline create` refuses it.
            let mut runner = link::chain_runner(&self.env, &stored);
            runner
                .build()
                .await
                .map_err(|e| MirrorError::Invalid(format!("the link's plugins: {e}")))?;
        }
        save(&self.env.writer, &stored).await?;
        self.start(stored);
        self.describe(Some(&spec.name)).await
    }

    /// `MirrorList` (`None`) and `MirrorDescribe`.
    pub async fn describe(&self, name: Option<&str>) -> Result<Response, MirrorError> {
        let mut shared: Vec<Arc<Shared>> = {
            let running = self.lock();
            match name {
                Some(n) => vec![
                    running
                        .get(n)
                        .map(|r| r.shared.clone())
                        .ok_or_else(|| MirrorError::Unknown(n.to_owned()))?,
                ],
                None => running.values().map(|r| r.shared.clone()).collect(),
            }
        };
        shared.sort_by_key(|s| s.stored().name.clone());
        let mut out = Vec::with_capacity(shared.len());
        for s in shared {
            out.push(self.description(&s).await);
        }
        Ok(Response::Mirrors(out))
    }

    async fn description(&self, shared: &Shared) -> MirrorDescription {
        let stored = shared.stored().clone();
        let (state, detail) = shared.status();
        let next_attempt_ms = match state {
            LinkState::BackingOff { until_ms } => Some(until_ms),
            _ => None,
        };
        let (partitions, unskipped) = self.lag(&stored).await;
        MirrorDescription {
            name: stored.name.clone(),
            topic: stored.topic.clone(),
            to: stored.to.clone(),
            to_topic: stored.to_topic.clone(),
            compression: stored.compression(),
            max_bytes_per_s: stored.max_bytes_per_s,
            mtls: !stored.cert_pem.is_empty(),
            chain: stored.chain(),
            state: state.name().to_owned(),
            detail,
            next_attempt_ms,
            partitions,
            bytes_sent: shared.bytes_sent.load(Ordering::Relaxed),
            batch_bytes_sent: shared.batch_bytes_sent.load(Ordering::Relaxed),
            records_sent: shared.records_sent.load(Ordering::Relaxed),
            dropped_records: stored.skipped_records + unskipped,
            dropped_bytes: stored.dropped_bytes,
        }
    }

    /// Each source partition's delivered offset and lag, and the records
    /// deleted undelivered that the hub has not skipped yet (below the log
    /// start, above the hub's log end as last heard). The lag in bytes is
    /// estimated from the partition's stored bytes per record: the store
    /// keeps a size per partition, not per offset.
    async fn lag(&self, stored: &Stored) -> (Vec<MirrorPartition>, u64) {
        let Ok(spec) = self.env.topics.spec(&stored.topic) else {
            return (Vec::new(), 0);
        };
        let Ok(infos) = self.env.reader.partitions(spec).await else {
            return (Vec::new(), 0);
        };
        let unskipped = infos
            .iter()
            .map(|info| {
                let delivered = stored.delivered.get(&info.partition).copied().unwrap_or(0);
                info.log_start.saturating_sub(delivered)
            })
            .sum();
        let partitions = infos
            .into_iter()
            .map(|info| {
                let log_end = self
                    .env
                    .reader
                    .high_watermark(&stored.topic, info.partition);
                let delivered = stored.delivered.get(&info.partition).copied();
                let from = delivered.unwrap_or(0).max(info.log_start);
                let lag_records = log_end.saturating_sub(from);
                let lag_bytes = match info.records() {
                    0 => 0,
                    records => {
                        (u128::from(info.size_bytes) * u128::from(lag_records)
                            / u128::from(records)) as u64
                    }
                };
                MirrorPartition {
                    partition: info.partition,
                    delivered,
                    log_end,
                    lag_records,
                    lag_bytes,
                }
            })
            .collect();
        (partitions, unskipped)
    }

    /// `MirrorPause` (`paused`) and `MirrorResume`.
    pub async fn set_paused(&self, name: &str, paused: bool) -> Result<Response, MirrorError> {
        let (shared, task) = {
            let mut running = self.lock();
            let r = running
                .get_mut(name)
                .ok_or_else(|| MirrorError::Unknown(name.to_owned()))?;
            (r.shared.clone(), r.task.take())
        };
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        let stored = {
            let mut stored = shared.stored();
            stored.paused = paused;
            stored.clone()
        };
        save(&self.env.writer, &stored).await?;
        if paused {
            shared.set_status(LinkState::Paused, "");
        } else {
            shared.set_status(LinkState::Connecting, "");
            let task = tokio::spawn(link::run(self.env.clone(), shared.clone()));
            if let Some(r) = self.lock().get_mut(name) {
                r.task = Some(task);
            }
        }
        self.describe(Some(name)).await
    }

    /// `MirrorDelete`: stops the link and forgets the mirror (the hub's
    /// copy stays, bound to this mirror's identity).
    pub async fn delete(&self, name: &str) -> Result<Response, MirrorError> {
        let running = self
            .lock()
            .remove(name)
            .ok_or_else(|| MirrorError::Unknown(name.to_owned()))?;
        if let Some(task) = running.task {
            task.abort();
            let _ = task.await;
        }
        let key = name.to_owned();
        self.env
            .writer
            .run(move |store| store.put_config(ConfigKind::Mirror, &key, None))
            .await?;
        Ok(Response::Done)
    }
}

impl crate::retention::Holder for Mirrors {
    /// Every mirror holds each source partition from the hub's log end as
    /// last heard (from 0 before the first contact), paused or not.
    fn holds(&self) -> Vec<RetentionHold> {
        let running = self.lock();
        let mut holds = Vec::new();
        for r in running.values() {
            let stored = r.shared.stored();
            let Ok(spec) = self.env.topics.spec(&stored.topic) else {
                continue;
            };
            for partition in 0..spec.partitions {
                holds.push(RetentionHold {
                    holder: stored.name.clone(),
                    topic: stored.topic.clone(),
                    partition,
                    from: stored.delivered.get(&partition).copied().unwrap_or(0),
                    max_bytes: self.env.config.max_backlog_bytes,
                    dropped_records: 0,
                    dropped_bytes: 0,
                });
            }
        }
        holds
    }

    fn dropped(&self, holds: &[RetentionHold]) {
        for hold in holds.iter().filter(|h| h.dropped_records > 0) {
            let Some(shared) = self.lock().get(&hold.holder).map(|r| r.shared.clone()) else {
                continue;
            };
            tracing::warn!(
                mirror = %hold.holder,
                topic = %hold.topic,
                partition = hold.partition,
                records = hold.dropped_records,
                bytes = hold.dropped_bytes,
                max_backlog_bytes = self.env.config.max_backlog_bytes,
                "mirror backlog over its cap: records not known delivered were deleted"
            );
            let snapshot = {
                let mut stored = shared.stored();
                stored.dropped_bytes += hold.dropped_bytes;
                stored.clone()
            };
            let writer = self.env.writer.clone();
            tokio::spawn(async move {
                if let Err(e) = save(&writer, &snapshot).await {
                    tracing::warn!(mirror = %snapshot.name, error = %e, "storing mirror counters failed");
                }
            });
        }
    }
}

/// Stores a mirror's definition and progress, through the writer.
async fn save(writer: &Writer, stored: &Stored) -> Result<(), StoreError> {
    let blob = serde_json::to_vec(stored)
        .map_err(|e| StoreError::Backend(format!("encoding mirror {}: {e}", stored.name)))?;
    let name = stored.name.clone();
    writer
        .run(move |store| store.put_config(ConfigKind::Mirror, &name, Some(&blob)))
        .await
}

/// A random number from the system's secure source (a mirror's identity,
/// backoff jitter).
pub(crate) fn random_u64() -> u64 {
    let mut random = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
    u64::from_be_bytes(random)
}
