//! WebAssembly plugins in the broker: the registry, topic ingest chains,
//! read-path chains, dead letters and counters. Pipelines, the third attach
//! point, live in [`crate::pipelines`] and use the pieces here.
//!
//! Every attach point runs a [`Chain`] of plugin instances. A chain is
//! built from the registry's latest version of each plugin and, before each
//! batch, swaps in any plugin replaced since (hot swap: the next batch sees
//! the new version, with no restart).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use edgebus_proto::ErrorCode;
use edgebus_proto::batch::{BatchBuilder, Header, ProducerStamp, Record, StoredRecord};
use edgebus_proto::frame::{
    AttachCounters, FailurePolicy, PluginDescription, PluginRef, Request, Response,
};
use edgebus_store::{ConfigKind, LogStore, PluginInfo};
use edgebus_wasm::{Chain, ChainOutput, Engine, MemState, Plugin, PluginError, PluginRecord};

/// Shortest and longest pause of a halted attach point.
pub const HALT_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest pause of a halted attach point.
pub const HALT_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Record counters of one attach point, updated without locks.
#[derive(Debug, Default)]
pub struct Counters {
    records_in: AtomicU64,
    records_out: AtomicU64,
    filtered: AtomicU64,
    failed: AtomicU64,
    dead_lettered: AtomicU64,
}

impl Counters {
    /// Adds one chain run's outcome.
    pub fn record(&self, inputs: usize, out: &ChainOutput, dead_lettered: usize) {
        let add = |c: &AtomicU64, n: usize| c.fetch_add(n as u64, Ordering::Relaxed);
        add(&self.records_in, inputs);
        add(&self.records_out, out.outputs.len());
        add(&self.filtered, out.filtered);
        add(&self.failed, out.failed.len());
        add(&self.dead_lettered, dead_lettered);
    }

    /// The counters now.
    pub fn snapshot(&self) -> AttachCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AttachCounters {
            records_in: get(&self.records_in),
            records_out: get(&self.records_out),
            filtered: get(&self.filtered),
            failed: get(&self.failed),
            dead_lettered: get(&self.dead_lettered),
        }
    }
}

/// A chain plus the plugin versions it was built from.
pub struct LiveChain {
    chain: Chain,
    versions: Vec<u32>,
}

impl LiveChain {
    /// Whether every stage is a filter, so outputs are always inputs.
    pub fn only_filters(&self) -> bool {
        (0..self.chain.len()).all(|i| {
            self.chain
                .plugin(i)
                .is_some_and(|p| p.kind() == edgebus_wasm::PluginKind::Filter)
        })
    }

    /// The chain, to run batches through.
    pub fn chain_mut(&mut self) -> &mut Chain {
        &mut self.chain
    }
}

/// Exponential backoff of a halted attach point.
#[derive(Debug, Default)]
pub struct Halt {
    until: Option<Instant>,
    next: Option<Duration>,
}

impl Halt {
    /// Whether the attach point is paused now.
    pub fn active(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| now < u)
    }

    /// Pauses for the next backoff step (1 s, 2 s, … 30 s) and returns it.
    pub fn trip(&mut self, now: Instant) -> Duration {
        let pause = self.next.unwrap_or(HALT_BACKOFF_MIN);
        self.until = Some(now + pause);
        self.next = Some((pause * 2).min(HALT_BACKOFF_MAX));
        pause
    }

    /// A batch went through: the next failure starts the backoff over.
    pub fn clear(&mut self) {
        *self = Halt::default();
    }
}

/// A topic's ingest chain.
pub struct Attachment {
    /// The plugins and parameters.
    pub refs: Vec<PluginRef>,
    /// What happens to failed records.
    pub policy: FailurePolicy,
    /// Counters since start.
    pub counters: Counters,
    chain: Mutex<Option<LiveChain>>,
    halt: Mutex<Halt>,
}

/// What an ingest chain did to a produced batch.
pub enum Ingested {
    /// Only filters ran and they kept every record: store the producer's
    /// batch as it is, without re-encoding it.
    Unchanged,
    /// Append these records (possibly none) in place of the batch.
    Records {
        /// Output records.
        records: Vec<Record>,
        /// Dead letters to write to `<topic>.dlq` first.
        dead_letters: Vec<Record>,
    },
    /// Refuse the batch with this response.
    Refused(Response),
}

/// The broker's plugins: the engine, the registry cache and attachments.
pub struct Plugins {
    engine: Engine,
    store: Arc<dyn LogStore>,
    registry: Mutex<HashMap<String, (PluginInfo, Plugin)>>,
    ingest: RwLock<HashMap<String, Arc<Attachment>>>,
    read_counters: Mutex<HashMap<String, Arc<Counters>>>,
}

fn plugin_error(e: &PluginError) -> Response {
    Response::error(ErrorCode::PluginInvalid, e.to_string())
}

fn unknown_plugin(name: &str) -> Response {
    Response::error(ErrorCode::UnknownPlugin, format!("unknown plugin {name:?}"))
}

/// Encodes a chain config for the store, as the request that sets it.
pub fn encode_ingest(topic: &str, refs: &[PluginRef], policy: FailurePolicy) -> Vec<u8> {
    let mut buf = BytesMut::new();
    Request::SetIngest {
        topic: topic.to_owned(),
        chain: refs.to_vec(),
        on_failure: policy,
    }
    .encode(0, &mut buf);
    buf[4..].to_vec()
}

impl Plugins {
    /// Starts the engine and restores ingest chains from the store.
    pub fn new(engine: Engine, store: Arc<dyn LogStore>) -> Result<Plugins, String> {
        let plugins = Plugins {
            engine,
            store,
            registry: Mutex::new(HashMap::new()),
            ingest: RwLock::new(HashMap::new()),
            read_counters: Mutex::new(HashMap::new()),
        };
        let configs = plugins
            .store
            .configs(ConfigKind::Ingest)
            .map_err(|e| e.to_string())?;
        for (topic, blob) in configs {
            match Request::decode(Bytes::from(blob)) {
                Ok((
                    _,
                    Request::SetIngest {
                        chain, on_failure, ..
                    },
                )) => {
                    plugins.install_ingest(&topic, chain, on_failure);
                }
                other => tracing::error!(%topic, ?other, "unreadable ingest config ignored"),
            }
        }
        Ok(plugins)
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, HashMap<String, (PluginInfo, Plugin)>> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The latest version of a plugin, compiled (from the engine's cache
    /// when it was compiled before).
    pub fn load(&self, name: &str) -> Result<(PluginInfo, Plugin), Response> {
        if let Some(found) = self.registry().get(name) {
            return Ok(found.clone());
        }
        let (info, wasm) = self
            .store
            .plugin(name)
            .map_err(|e| Response::error(ErrorCode::StorageError, e.to_string()))?
            .ok_or_else(|| unknown_plugin(name))?;
        let plugin = self.engine.load(&wasm).map_err(|e| plugin_error(&e))?;
        self.registry()
            .insert(name.to_owned(), (info.clone(), plugin.clone()));
        Ok((info, plugin))
    }

    /// `PluginAdd`: validates the component (it must be a filter or
    /// transform of `edgebus:plugin@0.1`), stores it and makes it the
    /// current version.
    pub fn add(&self, name: &str, wasm: &[u8], now_ms: i64) -> Response {
        if let Err(reason) = edgebus_store::topic::check_name(name) {
            return Response::error(
                ErrorCode::InvalidRequest,
                format!("invalid plugin name: {reason}"),
            );
        }
        let plugin = match self.engine.load(wasm) {
            Ok(p) => p,
            Err(e) => return plugin_error(&e),
        };
        let kind = format!("{:?}", plugin.kind()).to_lowercase();
        match self
            .store
            .put_plugin(name, &kind, plugin.hash(), wasm, now_ms)
        {
            Ok(info) => {
                let description = self.describe_info(&info, Vec::new());
                self.registry().insert(name.to_owned(), (info, plugin));
                Response::Plugins(vec![description])
            }
            Err(e) => Response::error(ErrorCode::StorageError, e.to_string()),
        }
    }

    fn describe_info(&self, info: &PluginInfo, users: Vec<String>) -> PluginDescription {
        PluginDescription {
            name: info.name.clone(),
            version: info.version,
            hash: info.hash.clone(),
            kind: info.kind.clone(),
            size_bytes: info.size_bytes,
            added_ms: info.added_ms,
            users,
        }
    }

    /// Where `name` is attached: ingest chains here, plus `others`
    /// (pipelines).
    pub fn users(&self, name: &str, others: Vec<String>) -> Vec<String> {
        let mut users: Vec<String> = self
            .ingest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, a)| a.refs.iter().any(|r| r.name == name))
            .map(|(topic, _)| format!("topic:{topic}"))
            .collect();
        users.extend(others);
        users.sort();
        users
    }

    /// `PluginList` / `PluginDescribe`.
    pub fn list(&self, only: Option<&str>, users_of: impl Fn(&str) -> Vec<String>) -> Response {
        let infos = match self.store.plugins() {
            Ok(i) => i,
            Err(e) => return Response::error(ErrorCode::StorageError, e.to_string()),
        };
        let found: Vec<PluginDescription> = infos
            .iter()
            .filter(|i| only.is_none_or(|n| n == i.name))
            .map(|i| self.describe_info(i, users_of(&i.name)))
            .collect();
        match only {
            Some(name) if found.is_empty() => unknown_plugin(name),
            _ => Response::Plugins(found),
        }
    }

    /// `PluginRemove`: refused while the plugin is attached anywhere.
    pub fn remove(&self, name: &str, users: Vec<String>) -> Response {
        if !users.is_empty() {
            return Response::error(
                ErrorCode::PluginInUse,
                format!("plugin {name:?} is in use by {}", users.join(", ")),
            );
        }
        match self.store.remove_plugin(name) {
            Ok(true) => {
                self.registry().remove(name);
                Response::Done
            }
            Ok(false) => unknown_plugin(name),
            Err(e) => Response::error(ErrorCode::StorageError, e.to_string()),
        }
    }

    /// Builds a chain, each plugin with its own in-memory state (ingest and
    /// read path; pipelines pass their own state).
    pub fn build_chain(
        &self,
        refs: &[PluginRef],
        mut state: impl FnMut(usize) -> Box<dyn edgebus_wasm::StateStore>,
    ) -> Result<LiveChain, Response> {
        let mut links = Vec::with_capacity(refs.len());
        let mut versions = Vec::with_capacity(refs.len());
        for (i, r) in refs.iter().enumerate() {
            let (info, plugin) = self.load(&r.name)?;
            versions.push(info.version);
            links.push((plugin, r.name.clone(), r.params.clone(), state(i)));
        }
        let chain = Chain::new(links)
            .map_err(|e| Response::error(ErrorCode::PluginInvalid, format!("plugin chain: {e}")))?;
        Ok(LiveChain { chain, versions })
    }

    /// Swaps in plugins replaced since the chain was built.
    pub fn refresh(&self, live: &mut LiveChain, refs: &[PluginRef]) -> Result<(), Response> {
        for (i, r) in refs.iter().enumerate() {
            let (info, plugin) = self.load(&r.name)?;
            if info.version != live.versions[i] {
                live.chain.replace(i, plugin).map_err(|e| {
                    Response::error(ErrorCode::PluginInvalid, format!("plugin swap: {e}"))
                })?;
                live.versions[i] = info.version;
                tracing::info!(plugin = %r.name, version = info.version, "plugin swapped in");
            }
        }
        Ok(())
    }

    /// `SetIngest`: checks the chain initialises, stores it, and applies it
    /// from the next produced batch.
    pub fn set_ingest(&self, topic: &str, refs: Vec<PluginRef>, policy: FailurePolicy) -> Response {
        if !refs.is_empty()
            && let Err(e) = self.build_chain(&refs, |_| Box::new(MemState::default()))
        {
            return e;
        }
        let blob = (!refs.is_empty()).then(|| encode_ingest(topic, &refs, policy));
        if let Err(e) = self
            .store
            .put_config(ConfigKind::Ingest, topic, blob.as_deref())
        {
            return Response::error(ErrorCode::StorageError, e.to_string());
        }
        if refs.is_empty() {
            self.ingest
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(topic);
        } else {
            self.install_ingest(topic, refs, policy);
        }
        Response::Done
    }

    fn install_ingest(&self, topic: &str, refs: Vec<PluginRef>, policy: FailurePolicy) {
        let attachment = Arc::new(Attachment {
            refs,
            policy,
            counters: Counters::default(),
            chain: Mutex::new(None),
            halt: Mutex::new(Halt::default()),
        });
        self.ingest
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_owned(), attachment);
    }

    /// Forgets a deleted topic's chain (the store deletes its config).
    pub fn topic_deleted(&self, topic: &str) {
        self.ingest
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic);
    }

    /// A topic's ingest chain, if it has one.
    pub fn ingest_chain(&self, topic: &str) -> Option<Arc<Attachment>> {
        self.ingest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
            .cloned()
    }

    /// The read-path counters of a topic.
    pub fn read_counters(&self, topic: &str) -> Arc<Counters> {
        self.read_counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(topic.to_owned())
            .or_default()
            .clone()
    }

    /// `TopicPlugins`.
    pub fn topic_plugins(&self, topic: &str) -> Response {
        let attachment = self.ingest_chain(topic);
        Response::TopicPlugins {
            ingest: attachment
                .as_ref()
                .map(|a| a.refs.clone())
                .unwrap_or_default(),
            on_failure: attachment.as_ref().map(|a| a.policy).unwrap_or_default(),
            ingest_counters: attachment
                .as_ref()
                .map(|a| a.counters.snapshot())
                .unwrap_or_default(),
            read_counters: self.read_counters(topic).snapshot(),
        }
    }

    /// Runs a topic's ingest chain on produced records. Blocking: call it
    /// from a blocking task.
    pub fn run_ingest(&self, topic: &str, a: &Attachment, records: Vec<StoredRecord>) -> Ingested {
        let now = Instant::now();
        if lock(&a.halt).active(now) {
            return Ingested::Refused(Response::error(
                ErrorCode::PluginHalted,
                format!("ingest chain of {topic:?} is halted after plugin failures; retry later"),
            ));
        }
        let inputs: Vec<PluginRecord> = records.iter().map(|r| to_plugin(r, false)).collect();
        let count = inputs.len();
        let mut slot = lock(&a.chain);
        if slot.is_none() {
            match self.build_chain(&a.refs, |_| Box::new(MemState::default())) {
                Ok(live) => *slot = Some(live),
                Err(e) => return Ingested::Refused(e),
            }
        }
        let live = slot.as_mut().expect("built above");
        if let Err(e) = self.refresh(live, &a.refs) {
            return Ingested::Refused(e);
        }
        let only_filters = live.only_filters();
        let out = live.chain.process(inputs);
        if let Some((plugin, message)) = &out.rejected {
            a.counters.record(count, &out, 0);
            return Ingested::Refused(Response::error(
                ErrorCode::PluginRejected,
                format!("plugin {plugin:?} rejected the batch: {message}"),
            ));
        }
        if !out.failed.is_empty() && a.policy == FailurePolicy::Halt {
            let pause = lock(&a.halt).trip(now);
            let (_, plugin, error) = &out.failed[0];
            tracing::warn!(%topic, %plugin, %error, ?pause, "ingest chain halted");
            a.counters.record(count, &out, 0);
            return Ingested::Refused(Response::error(
                ErrorCode::PluginHalted,
                format!(
                    "plugin {plugin:?} failed ({error}); ingest of {topic:?} halted for {pause:?}"
                ),
            ));
        }
        lock(&a.halt).clear();
        let dead_letters: Vec<Record> = if a.policy == FailurePolicy::DeadLetter {
            out.failed
                .iter()
                .map(|(index, plugin, error)| {
                    let version = self.load(plugin).map(|(i, _)| i.version).unwrap_or(0);
                    dead_letter(&records[*index], topic, None, plugin, version, error)
                })
                .collect()
        } else {
            Vec::new()
        };
        a.counters.record(count, &out, dead_letters.len());
        if only_filters && out.outputs.len() == count {
            return Ingested::Unchanged;
        }
        Ingested::Records {
            records: out
                .outputs
                .into_iter()
                .map(|(_, r)| from_plugin(r))
                .collect(),
            dead_letters,
        }
    }
}

/// Locks a mutex, recovering it if a thread panicked while holding it.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The record a plugin sees. `with_position` adds offset and partition
/// (read path and pipelines; not ingest, where offsets are not assigned).
pub fn to_plugin(r: &StoredRecord, with_position: bool) -> PluginRecord {
    PluginRecord {
        key: r.key.as_ref().map(|k| k.to_vec()),
        value: r.value.to_vec(),
        headers: r
            .headers
            .iter()
            .map(|h| (h.key.clone(), h.value.to_vec()))
            .collect(),
        timestamp_ms: r.timestamp_ms,
        offset: with_position.then_some(r.offset),
        partition: None,
    }
}

/// A plugin's output as a record to store.
pub fn from_plugin(r: PluginRecord) -> Record {
    Record {
        key: r.key.map(Bytes::from),
        value: Bytes::from(r.value),
        headers: r
            .headers
            .into_iter()
            .map(|(key, value)| Header {
                key,
                value: Bytes::from(value),
            })
            .collect(),
        timestamp_ms: r.timestamp_ms,
    }
}

/// The dead letter for an input a plugin failed on: the input as it was,
/// with headers naming the error, plugin, version and source position.
pub fn dead_letter(
    input: &StoredRecord,
    topic: &str,
    offset: Option<(u32, u64)>,
    plugin: &str,
    version: u32,
    error: &PluginError,
) -> Record {
    let mut record = Record {
        key: input.key.clone(),
        value: input.value.clone(),
        headers: input.headers.clone(),
        timestamp_ms: input.timestamp_ms,
    }
    .with_header("edgebus-error", error.to_string())
    .with_header("edgebus-plugin", plugin.to_owned())
    .with_header("edgebus-plugin-version", version.to_string())
    .with_header("edgebus-source-topic", topic.to_owned());
    if let Some((partition, offset)) = offset {
        record = record
            .with_header("edgebus-source-partition", partition.to_string())
            .with_header("edgebus-source-offset", offset.to_string());
    }
    record
}

/// Encodes records into batches of at most about `max_bytes` each.
pub fn batches(records: &[Record], max_bytes: usize) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut builder = BatchBuilder::new();
    for r in records {
        if !builder.is_empty()
            && builder.size_bytes() + BatchBuilder::record_size(r, i64::MIN, u32::MAX) > max_bytes
        {
            out.push(std::mem::take(&mut builder).finish(ProducerStamp::NONE));
        }
        builder.push(r);
    }
    if !builder.is_empty() {
        out.push(builder.finish(ProducerStamp::NONE));
    }
    out
}

/// The dead-letter topic of `topic`.
pub fn dlq_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}
