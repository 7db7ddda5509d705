//! The one way a plugin chain runs, at every attach point: topic ingest,
//! subscription read paths and pipelines.
//!
//! ```text
//!  stored or produced records ──▶ ChainRunner::run ──▶ outputs (by input index)
//!                                   │ blocking thread:         + dead letters
//!                                   │ hot swap, then process   + counters
//!                                   ▼
//!                     failure policy: skip │ dead-letter │ halt (an error the
//!                                                          attach point reacts to)
//! ```
//!
//! The attach points differ only in what they do around a run: ingest
//! refuses the producer while halted, a read path waits and retries, a
//! pipeline backs off and rebuilds from its stored state; each stores the
//! dead letters its own way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgebus_proto::batch::{
    BatchBuilder, BatchHeader, Header, ProducerStamp, Record, StoredRecord,
};
use edgebus_proto::frame::{AttachCounters, FailurePolicy, PluginRef};
use edgebus_proto::{DecodeError, ErrorCode};
use edgebus_wasm::{Breach, ChainOutput, MemState, PluginError, PluginRecord, StateStore};
use hdrhistogram::Histogram;

use crate::error::Coded;
use crate::registry::{LiveChain, Registry, RegistryError};
use crate::writer::Output;

/// The largest batch of plugin output the broker stores or sends in one
/// frame: a fetch or subscription frame of it, with its head, fits in the
/// default frame limit every client reads with.
pub const MAX_OUTPUT_BATCH_BYTES: usize =
    edgebus_proto::limits::DEFAULT_MAX_FRAME_BYTES as usize - (64 << 10);

/// What a chain's outputs must fit, checked before anything is stored or
/// sent: the destination's limits, as a producer's records are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// The destination's `max.message.bytes`: no output record may be
    /// larger (as encoded in a batch, at its largest).
    pub max_record_bytes: usize,
    /// All outputs of one run are stored or sent as one batch of at most
    /// this many bytes (`usize::MAX`: the caller splits them itself).
    pub max_batch_bytes: usize,
    /// Bytes counted against `max_batch_bytes` for each input with
    /// outputs, where each input's outputs get a batch (and its header) of
    /// their own.
    pub overhead_per_input: usize,
}

/// Shortest pause of a halted attach point.
pub const HALT_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest pause of a halted attach point.
pub const HALT_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Counters of one attach point: record counts updated without locks, and
/// per call (once per batch) its time, replacements and state size.
#[derive(Debug, Default)]
pub struct Counters {
    calls: AtomicU64,
    instance_replacements: AtomicU64,
    state_bytes: AtomicU64,
    /// Wall time of each call, in microseconds.
    call_times: Mutex<Option<Histogram<u64>>>,
    records_in: AtomicU64,
    records_out: AtomicU64,
    filtered: AtomicU64,
    failed: AtomicU64,
    dead_lettered: AtomicU64,
    budget_breaches: AtomicU64,
    log_lines: AtomicU64,
    log_lines_dropped: AtomicU64,
    failing_cpu_us: AtomicU64,
}

impl Counters {
    /// Adds one run's counts.
    pub fn add(&self, run: AttachCounters) {
        let add = |c: &AtomicU64, n: u64| c.fetch_add(n, Ordering::Relaxed);
        add(&self.records_in, run.records_in);
        add(&self.records_out, run.records_out);
        add(&self.filtered, run.filtered);
        add(&self.failed, run.failed);
        add(&self.dead_lettered, run.dead_lettered);
        add(&self.budget_breaches, run.budget_breaches);
        add(&self.log_lines, run.log_lines);
        add(&self.log_lines_dropped, run.log_lines_dropped);
        add(&self.failing_cpu_us, run.failing_cpu_us);
    }

    /// Counts one call of the chain on one batch.
    pub fn call(&self, elapsed: Duration, replaced: usize, state_bytes: u64) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.instance_replacements
            .fetch_add(replaced as u64, Ordering::Relaxed);
        self.state_bytes.store(state_bytes, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let mut times = self
            .call_times
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Three significant figures up to an hour: about 20 KiB per
        // attachment, made on its first call.
        if times.is_none() {
            *times = Histogram::new_with_max(3_600_000_000, 3).ok();
        }
        if let Some(times) = times.as_mut() {
            times.saturating_record(micros);
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> AttachCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (call_p50_us, call_p99_us) = self
            .call_times
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or((0, 0), |t| {
                (t.value_at_quantile(0.5), t.value_at_quantile(0.99))
            });
        AttachCounters {
            calls: get(&self.calls),
            instance_replacements: get(&self.instance_replacements),
            call_p50_us,
            call_p99_us,
            state_bytes: get(&self.state_bytes),
            records_in: get(&self.records_in),
            records_out: get(&self.records_out),
            filtered: get(&self.filtered),
            failed: get(&self.failed),
            dead_lettered: get(&self.dead_lettered),
            budget_breaches: get(&self.budget_breaches),
            log_lines: get(&self.log_lines),
            log_lines_dropped: get(&self.log_lines_dropped),
            failing_cpu_us: get(&self.failing_cpu_us),
        }
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

/// Where a chain runs. It decides what plugins see and what a rejection
/// means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachPoint {
    /// Before append: records have no offsets yet, so plugins see neither
    /// offset nor partition and dead letters carry no source position. A
    /// rejection refuses the producer's batch.
    Ingest,
    /// A subscription: records keep their offsets. A rejection ends the
    /// subscription with the plugin's message.
    ReadPath,
    /// Topic to topic: records keep their offsets. Nobody waits on the batch
    /// to refuse it, so a rejection is a failure of every record, handled
    /// by the failure policy.
    Pipeline,
}

/// The `edgebus-attach-point` header of a dead letter.
pub const ATTACH_POINT_HEADER: &str = "edgebus-attach-point";

impl AttachPoint {
    /// The attach point's name in dead-letter headers.
    pub fn name(self) -> &'static str {
        match self {
            AttachPoint::Ingest => "ingest",
            AttachPoint::ReadPath => "read-path",
            AttachPoint::Pipeline => "pipeline",
        }
    }
}

/// Makes the state store of the plugin at each chain position.
pub type StateFactory = Arc<dyn Fn(usize) -> Box<dyn StateStore> + Send + Sync>;

/// State in broker memory, empty at start (ingest and read paths).
pub fn in_memory_state() -> StateFactory {
    Arc::new(|_| Box::new(MemState::default()))
}

/// Why a run produced no outputs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainRunError {
    /// The chain could not be built or a replaced plugin swapped in.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A plugin refused the whole batch.
    #[error("plugin {plugin:?} rejected the batch: {message}")]
    Rejected {
        /// The plugin.
        plugin: String,
        /// Its message.
        message: String,
    },
    /// The policy is halt and a plugin failed on a record (trap, deadline,
    /// memory cap). The attach point decides how to pause.
    #[error("plugin {plugin:?} failed ({error})")]
    Failed {
        /// The plugin.
        plugin: String,
        /// How it failed.
        error: PluginError,
        /// The source offset of the record, where records have one.
        offset: Option<u64>,
    },
    /// The blocking task that ran the chain failed.
    #[error("plugin task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The low-priority thread that ran the chain lost it.
    #[error(transparent)]
    Lost(#[from] crate::low_priority::Lost),
}

impl Coded for ChainRunError {
    fn code(&self) -> ErrorCode {
        match self {
            ChainRunError::Registry(e) => e.code(),
            ChainRunError::Rejected { .. } => ErrorCode::PluginRejected,
            ChainRunError::Failed { .. } => ErrorCode::PluginHalted,
            ChainRunError::Task(_) | ChainRunError::Lost(_) => ErrorCode::StorageError,
        }
    }
}

/// What one batch came to, after the failure policy.
pub struct ChainRun {
    /// The surviving records, each with the index of its input, within the
    /// run's [`OutputLimits`].
    pub outputs: Vec<(usize, Record)>,
    /// Failed inputs to store in `<topic>.dlq`, under `dead-letter`.
    pub dead_letters: Vec<Record>,
    /// The inputs a plugin failed on, by index, with why; under
    /// `dead-letter`, in the order of `dead_letters`.
    pub failures: Vec<(usize, String)>,
    /// Only filters ran and they kept every input: the inputs can be stored
    /// or served as they are.
    pub unchanged: bool,
}

/// A plugin chain attached somewhere, built on first use and kept between
/// batches.
pub struct ChainRunner {
    registry: Arc<Registry>,
    refs: Vec<PluginRef>,
    policy: FailurePolicy,
    attach: AttachPoint,
    counters: Arc<Counters>,
    state: StateFactory,
    live: Option<LiveChain>,
    /// Until when the chain's calls run on the low-priority threads: a
    /// call ran into its deadline (see [`DEMOTION`]).
    demoted_until: Option<Instant>,
}

/// How long a chain runs on the low-priority threads
/// ([`crate::low_priority`]) after a call of it ran into its deadline: a
/// plugin that burns its time, not one that refuses a bad record in
/// microseconds. Deadlines missed while demoted (a starved thread can miss
/// one) do not renew it, so a chain is back at normal priority this long
/// after its demotion whatever the load.
const DEMOTION: Duration = Duration::from_secs(10);

impl ChainRunner {
    /// A runner of `refs` at `attach`, counting into `counters`.
    pub fn new(
        registry: Arc<Registry>,
        refs: Vec<PluginRef>,
        policy: FailurePolicy,
        attach: AttachPoint,
        counters: Arc<Counters>,
        state: StateFactory,
    ) -> ChainRunner {
        ChainRunner {
            registry,
            refs,
            policy,
            attach,
            counters,
            state,
            live: None,
            demoted_until: None,
        }
    }

    /// Builds the chain now, checking that every plugin initialises.
    pub async fn build(&mut self) -> Result<(), ChainRunError> {
        if self.live.is_none() {
            let (registry, refs, state) =
                (self.registry.clone(), self.refs.clone(), self.state.clone());
            let live =
                tokio::task::spawn_blocking(move || registry.build_chain(&refs, &*state)).await??;
            self.live = Some(live);
        }
        Ok(())
    }

    /// Drops the chain: the next run builds it again from its state store.
    pub fn reset(&mut self) {
        self.live = None;
    }

    /// Runs one batch of `topic`/`partition` through the chain on a
    /// blocking thread, checks the outputs against `limits` (an input
    /// whose outputs do not fit fails with [`PluginError::Budget`]), then
    /// applies the failure policy and counts.
    pub async fn run(
        &mut self,
        topic: &str,
        partition: u32,
        records: &[StoredRecord],
        limits: OutputLimits,
    ) -> Result<ChainRun, ChainRunError> {
        let positioned = self.attach != AttachPoint::Ingest;
        let inputs: Vec<PluginRecord> = records
            .iter()
            .map(|r| to_plugin(r, positioned.then_some(partition)))
            .collect();
        let (registry, refs, state) =
            (self.registry.clone(), self.refs.clone(), self.state.clone());
        let live = self.live.take();
        let work = move || {
            let mut live = match live {
                Some(live) => live,
                None => registry.build_chain(&refs, &*state)?,
            };
            registry.refresh(&mut live)?;
            let started = Instant::now();
            let out = live.chain_mut().process(inputs);
            Ok::<_, RegistryError>((live, out, started.elapsed()))
        };
        let demoted = self
            .demoted_until
            .is_some_and(|until| Instant::now() < until);
        let (mut live, out, elapsed) = if demoted {
            crate::low_priority::run(work).await??
        } else {
            tokio::task::spawn_blocking(work).await??
        };
        let burnt =
            |(_, _, e): &(usize, String, PluginError)| matches!(e, PluginError::Deadline(_));
        if !demoted && out.failed.iter().any(burnt) {
            self.demoted_until = Some(Instant::now() + DEMOTION);
        }
        self.counters
            .call(elapsed, out.replaced, live.chain_mut().state_bytes());
        let unchanged = live.only_filters();
        let versions = |plugin: &str| live.version_of(plugin);
        let ChainOutput {
            outputs,
            filtered,
            mut failed,
            rejected,
            log_lines,
            log_lines_dropped,
            failing_time,
            ..
        } = out;
        let last_stage = self.refs.last().map(|r| r.name.clone()).unwrap_or_default();
        let mut outputs = within(outputs, limits, unchanged, &last_stage, &mut failed);
        let count =
            |outputs: usize, failed: &[(usize, String, PluginError)], dead_lettered: usize| {
                AttachCounters {
                    records_in: records.len() as u64,
                    records_out: outputs as u64,
                    filtered: filtered as u64,
                    failed: failed.len() as u64,
                    dead_lettered: dead_lettered as u64,
                    budget_breaches: failed
                        .iter()
                        .filter(|(_, _, e)| matches!(e, PluginError::Budget(_)))
                        .count() as u64,
                    log_lines,
                    log_lines_dropped,
                    failing_cpu_us: u64::try_from(failing_time.as_micros()).unwrap_or(u64::MAX),
                    ..AttachCounters::default()
                }
            };
        if let Some((plugin, message)) = rejected {
            if self.attach != AttachPoint::Pipeline {
                self.counters.add(count(outputs.len(), &failed, 0));
                self.live = Some(live);
                return Err(ChainRunError::Rejected { plugin, message });
            }
            let error = PluginError::Rejected(message);
            failed = (0..records.len())
                .map(|i| (i, plugin.clone(), error.clone()))
                .collect();
            outputs.clear();
        }
        if self.policy == FailurePolicy::Halt && !failed.is_empty() {
            self.counters.add(count(outputs.len(), &failed, 0));
            self.live = Some(live);
            let (index, plugin, error) = failed.swap_remove(0);
            return Err(ChainRunError::Failed {
                plugin,
                error,
                offset: positioned.then(|| records[index].offset),
            });
        }
        let dead_letters: Vec<Record> = if self.policy == FailurePolicy::DeadLetter {
            failed
                .iter()
                .map(|(index, plugin, error)| {
                    let input = &records[*index];
                    let at = positioned.then_some((partition, input.offset));
                    dead_letter(input, topic, at, plugin, versions(plugin), error)
                        .with_header(ATTACH_POINT_HEADER, self.attach.name())
                })
                .collect()
        } else {
            Vec::new()
        };
        self.counters
            .add(count(outputs.len(), &failed, dead_letters.len()));
        let unchanged = unchanged && outputs.len() == records.len();
        self.live = Some(live);
        let failures = failed
            .into_iter()
            .map(|(index, plugin, error)| (index, format!("plugin {plugin:?} failed: {error}")))
            .collect();
        Ok(ChainRun {
            outputs,
            dead_letters,
            failures,
            unchanged,
        })
    }
}

/// The outputs as records to store, without those of inputs whose outputs
/// break `limits`: each such input joins `failed`, blamed on `plugin` (the
/// last stage). Unchanged inputs passed a producer's checks already.
///
/// With a batch limit, inputs are taken in order while their outputs fit
/// in one batch; the first input that would not fit, and every input
/// after it, fails, so what is stored is a prefix of what the chain made.
fn within(
    outputs: Vec<(usize, PluginRecord)>,
    limits: OutputLimits,
    unchanged: bool,
    plugin: &str,
    failed: &mut Vec<(usize, String, PluginError)>,
) -> Vec<(usize, Record)> {
    let records = outputs.into_iter().map(|(i, r)| (i, from_plugin(r)));
    if unchanged {
        return records.collect();
    }
    let mut kept = Vec::new();
    let mut batch_bytes = edgebus_proto::batch::HEADER_LEN;
    let mut full = false;
    let mut group: Vec<(usize, Record)> = Vec::new();
    let mut settle = |group: &mut Vec<(usize, Record)>, kept: &mut Vec<(usize, Record)>| {
        let Some(&(input, _)) = group.first() else {
            return;
        };
        let sizes: Vec<usize> = group
            .iter()
            .map(|(_, r)| BatchBuilder::record_size(r, i64::MIN, u32::MAX))
            .collect();
        let largest = sizes.iter().copied().max().unwrap_or(0);
        let breach = if largest > limits.max_record_bytes {
            Some(Breach::RecordBytes {
                size: largest,
                max: limits.max_record_bytes,
            })
        } else if full
            || batch_bytes + limits.overhead_per_input + sizes.iter().sum::<usize>()
                > limits.max_batch_bytes
        {
            full = true;
            Some(Breach::BatchBytes {
                max: limits.max_batch_bytes,
            })
        } else {
            None
        };
        match breach {
            Some(breach) => {
                failed.push((input, plugin.to_owned(), PluginError::Budget(breach)));
                group.clear();
            }
            None => {
                batch_bytes += limits.overhead_per_input + sizes.iter().sum::<usize>();
                kept.append(group);
            }
        }
    };
    for (input, record) in records {
        if group.first().is_some_and(|(i, _)| *i != input) {
            settle(&mut group, &mut kept);
        }
        group.push((input, record));
    }
    settle(&mut group, &mut kept);
    kept
}

/// The record a plugin sees. With `partition`, it also sees the offset and
/// partition (read path and pipelines; not ingest, where offsets are not
/// assigned yet).
fn to_plugin(r: &StoredRecord, partition: Option<u32>) -> PluginRecord {
    PluginRecord {
        key: r.key.clone(),
        value: r.value.clone(),
        headers: r
            .headers
            .iter()
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect(),
        timestamp_ms: r.timestamp_ms,
        offset: partition.map(|_| r.offset),
        partition,
    }
}

/// A plugin's output as a record to store.
fn from_plugin(r: PluginRecord) -> Record {
    Record {
        key: r.key,
        value: r.value,
        headers: r
            .headers
            .into_iter()
            .map(|(key, value)| Header { key, value })
            .collect(),
        timestamp_ms: r.timestamp_ms,
    }
}

/// The dead letter for an input a plugin failed on: the input as it was,
/// with headers naming the error, plugin, version and source position.
fn dead_letter(
    input: &StoredRecord,
    topic: &str,
    at: Option<(u32, u64)>,
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
    if let Some((partition, offset)) = at {
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

/// Batches of `records` for `topic`/`partition`, of the default size.
pub fn outputs(
    topic: &str,
    partition: u32,
    records: &[Record],
) -> Result<Vec<Output>, DecodeError> {
    batches(records, edgebus_proto::limits::DEFAULT_BATCH_MAX_BYTES)
        .into_iter()
        .map(|batch| {
            Ok(Output {
                topic: topic.to_owned(),
                partition,
                record_count: BatchHeader::parse(&batch)?.record_count,
                batch,
                sequence: None,
            })
        })
        .collect()
}
