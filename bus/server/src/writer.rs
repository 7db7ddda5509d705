//! The single writer: the IO shell of the partition engines, with group
//! commit.
//!
//! redb allows one write transaction at a time, and each durable commit
//! costs an fsync. So one thread owns writing: it takes every append that is
//! waiting, across all connections and partitions, lets each partition's
//! [`PartitionEngine`] decide its offset, dedup outcome and epoch, commits
//! them all in one transaction, and then hands the engines the outcome,
//! which release the acks that are due and advance the high watermark that
//! readers see. Under load a commit carries many batches and the fsync is
//! shared; at low load a lone append commits at once, with no timer to wait
//! for.
//!
//! ```text
//!  conn A ─┐                 engines decide          ┌─▶ ack A
//!  conn B ─┼─▶ queue ─▶ writer ──▶ txn + fsync ──▶ engines ─┼─▶ ack B
//!  conn C ─┘                                          └─▶ high watermark ─▶ readers
//! ```
//!
//! Writes that are not durable (`acks=leader` or `none`) are acknowledged
//! at commit but become visible to readers only once fsync'd: readers never
//! see past the high watermark, so a record read once is never lost by a
//! crash. The writer fsyncs them as soon as its queue is empty, and at
//! least every [`FLUSH_INTERVAL`] under steady load.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgebus_core::partition::{
    AckLevel, AppendError, AppendOutcome, AppendRequest, Command, PartitionEngine, PartitionState,
    ReplicaId, WriteId, WrittenError,
};
use edgebus_core::producer::{AppendRefused, ProducerState, SequenceSpan};
use edgebus_core::replica::{Replica, ReplicaCommand, RoleKind};
use edgebus_proto::batch::ProducerStamp;
use edgebus_store::{
    CommitError, DELETE_STEP_BYTES, LogStore, LogWrite, OffsetCommit, PipelineCommit, ReadError,
    RetentionHold, RetentionReport, StateWrite, StoreError, TopicError, TopicSpec, WriteError,
};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::notify::Notifier;

mod mirror;
mod replication;
pub use mirror::{MirrorBatches, MirrorCommit, MirrorRefused, MirrorSkip};
pub use replication::{MendSource, Outbound, ReplicaState};

/// Appends queued for the writer before producers wait.
const QUEUE_DEPTH: usize = 8192;

/// Offset-commit requests sharing one transaction at most.
const MAX_GROUP_OFFSET_COMMITS: usize = 4096;

/// The longest a committed but not yet durable write waits for its fsync
/// while the writer is busy; an idle writer fsyncs at once.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(20);

/// The exit status of a cluster node that stopped because its store failed
/// (see [`Shell::failed`]).
pub const STORE_FAILED_EXIT: i32 = 6;

/// Whether the store reopens itself after `error`, back to its last durable
/// commit.
fn reopens(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::Io(_) | StoreError::DiskFull(_) | StoreError::Recovering(_)
    )
}

/// This node's replica id. A single node is the only replica of each of
/// its partitions; the cluster gives nodes their ids.
const LOCAL_REPLICA: ReplicaId = 0;

/// One batch to append.
#[derive(Debug)]
pub struct Append {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// The encoded, validated batch; empty when an ingest chain dropped
    /// every record and only the producer's sequence advances.
    pub batch: Bytes,
    /// Records in `batch`.
    pub record_count: u32,
    /// The producer's batch as sent (its stamp and record count), for
    /// deduplication: it differs from `batch` when an ingest chain rewrote
    /// the records. `None` for a producer that is not idempotent.
    pub sequence: Option<SequenceSpan>,
    /// When to acknowledge.
    pub acks: AckLevel,
    /// Dead letters of this batch, stored in the same transaction, and only
    /// if the batch itself is stored (not a retry, not refused).
    pub dead_letters: Option<DeadLetters>,
    /// The ingest chain's state changes made while computing `batch`,
    /// stored in the same transaction (whether or not the batch is: they
    /// are what the chain holds in memory already).
    pub state: Option<StateWrite>,
}

/// Dead letters to append to partition 0 of a dead-letter topic.
#[derive(Debug)]
pub struct DeadLetters {
    /// The dead-letter topic.
    pub topic: String,
    /// Encoded batches with their record counts.
    pub batches: Vec<(Bytes, u32)>,
    /// Told the offset of the first dead letter once they are placed in
    /// the group; dropped unsent when they are not stored (a retry, a
    /// refused batch). It is told before the batch they came from is
    /// acknowledged, so the producer's answer can name where they went.
    pub placed: Option<oneshot::Sender<u64>>,
}

/// One pipeline output batch.
#[derive(Debug, Clone)]
pub struct Output {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// The encoded batch.
    pub batch: Bytes,
    /// Records in it.
    pub record_count: u32,
    /// The producer sequence span it is stamped with, for the partition
    /// engine's sequence check (a cluster pipeline's outputs, see
    /// [`edgebus_core::sourced`]); `None` for unstamped outputs.
    pub sequence: Option<SequenceSpan>,
}

/// One exactly-once pipeline step: outputs, plugin state and the source
/// position, committed in one durable transaction.
#[derive(Debug, Clone)]
pub struct PipelineStep {
    /// Pipeline name.
    pub pipeline: String,
    /// Output batches and dead letters.
    pub outputs: Vec<Output>,
    /// Plugin state changes in order: `Some` sets, `None` deletes.
    pub state: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// The source partition the step read.
    pub source_partition: u32,
    /// The next source offset after the step.
    pub source_next_offset: u64,
    /// A cluster pipeline's destination and the leader epoch its runner
    /// was started under: the step commits only while this node's copy of
    /// the destination leads at that epoch.
    pub fence: Option<(String, i32)>,
}

/// Result of one append, as the writer reports it.
pub type AppendResult = Result<AppendOutcome, AppendFailure>;

/// Why an append was not acknowledged as stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AppendFailure {
    /// The producer dedup rules refused it.
    #[error(transparent)]
    Refused(#[from] AppendRefused),
    /// No such topic.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// The topic has fewer partitions.
    #[error("topic {topic:?} has no partition {partition}")]
    UnknownPartition {
        /// Topic name.
        topic: String,
        /// Requested partition.
        partition: u32,
    },
    /// The transaction that was to hold it failed; nothing of it was
    /// stored. Retriable.
    #[error("storage: {0}")]
    Storage(String),
    /// The transaction failed because the broker's disk is full; nothing
    /// of it was stored. Retriable once space is freed.
    #[error("the broker's disk is full ({0})")]
    DiskFull(String),
    /// The writer has stopped.
    #[error("writer stopped")]
    Stopped,
    /// This node does not lead the partition (a cluster); retriable at the
    /// leader.
    #[error("this node does not lead the partition{}", leader.map(|l| format!("; node {l} does")).unwrap_or_default())]
    NotLeader {
        /// The leader, if known.
        leader: Option<u64>,
    },
    /// `acks=all` with the in-sync set below `min.insync.replicas`.
    #[error("{0}")]
    NotEnoughReplicas(String),
    /// The topic is a mirror's destination; only the mirror appends to it.
    #[error(
        "topic {0:?} is a mirror destination: only its mirror appends to it, so that its \
         offsets stay the source's"
    )]
    MirrorDestination(String),
}

impl From<ReadError> for AppendFailure {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::UnknownTopic(topic) => AppendFailure::UnknownTopic(topic),
            ReadError::UnknownPartition { topic, partition } => {
                AppendFailure::UnknownPartition { topic, partition }
            }
            other => AppendFailure::Storage(other.to_string()),
        }
    }
}

/// Why a pipeline step was not committed. Nothing of it was applied.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StepError {
    /// An output names a topic or partition that does not exist.
    #[error(transparent)]
    Target(#[from] AppendFailure),
    /// The store refused or failed the transaction.
    #[error(transparent)]
    Store(#[from] WriteError),
}

enum Op {
    Append {
        append: Box<Append>,
        reply: Option<oneshot::Sender<AppendResult>>,
    },
    Commit {
        commits: Vec<OffsetCommit>,
        reply: oneshot::Sender<Result<(), CommitError>>,
    },
    /// Runs after every append queued before it is committed.
    Ordered(Ordered),
    /// A cluster input; also after every append queued before it.
    Cluster(replication::ClusterOp),
}

enum Ordered {
    Retention {
        now_ms: i64,
        holds: Vec<RetentionHold>,
        reply: oneshot::Sender<Result<(RetentionReport, Vec<RetentionHold>), StoreError>>,
    },
    Pipeline {
        step: Box<PipelineStep>,
        reply: oneshot::Sender<Result<Vec<u64>, StepError>>,
    },
    CreateTopic {
        spec: TopicSpec,
        reply: oneshot::Sender<Result<(), TopicError>>,
    },
    DeleteTopic {
        name: String,
        reply: oneshot::Sender<Result<(), TopicError>>,
    },
    Run {
        job: Job,
    },
    MirrorOpen {
        spec: TopicSpec,
        mirror: String,
        filtered: bool,
        reply: mirror::OpenReply,
    },
    MirrorAppend {
        batches: Box<MirrorBatches>,
        reply: oneshot::Sender<Result<u64, MirrorRefused>>,
    },
    MirrorSkip {
        skip: mirror::MirrorSkip,
        reply: oneshot::Sender<Result<u64, MirrorRefused>>,
    },
    MirrorCommit {
        commit: Box<mirror::MirrorCommit>,
        reply: oneshot::Sender<Result<u64, MirrorRefused>>,
    },
}

/// A metadata write run on the writer thread.
type Job = Box<dyn FnOnce(&dyn LogStore) + Send>;

type Key = (String, u32);

/// The high watermark of every partition: what readers may see.
#[derive(Debug, Default)]
struct Watermarks(RwLock<HashMap<Key, u64>>);

impl Watermarks {
    fn get(&self, topic: &str, partition: u32) -> Option<u64> {
        let map = self.0.read().unwrap_or_else(PoisonError::into_inner);
        map.get(&(topic.to_owned(), partition)).copied()
    }

    fn set(&self, key: Key, high_watermark: u64) {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        map.insert(key, high_watermark);
    }

    /// Hides every partition's records: a cluster node learns what is
    /// committed from its replicas, not from what its store holds (a tail
    /// it may have to truncate).
    fn reset(&self) {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        for high_watermark in map.values_mut() {
            *high_watermark = 0;
        }
    }

    fn remove_topic(&self, topic: &str) {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        map.retain(|(t, _), _| t != topic);
    }
}

/// A handle to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Op>,
    engines: Arc<Mutex<Engines>>,
    watermarks: Arc<Watermarks>,
    notifier: Notifier,
    commits: Arc<tokio::sync::Notify>,
    /// When the replicas' timers next need running.
    ticks: Arc<replication::Ticks>,
    destinations: Arc<mirror::Destinations>,
    /// Set once the node joins a cluster: its partitions are driven by
    /// replicas, and one it holds no copy of is not its to write.
    clustered: Arc<std::sync::atomic::AtomicBool>,
}

impl Writer {
    /// Starts the writer thread over `store`, whose every partition starts
    /// with its stored log end as high watermark (all of it is durable). It
    /// stops when every handle is dropped.
    pub fn spawn(
        store: Arc<dyn LogStore>,
        notifier: Notifier,
        max_group_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Writer, StoreError> {
        let watermarks = Arc::new(Watermarks::default());
        for spec in store.topics()? {
            for partition in 0..spec.partitions {
                let log_end = store
                    .offsets(&spec.name, partition)
                    .map_err(|e| StoreError::Backend(e.to_string()))?
                    .log_end;
                watermarks.set((spec.name.clone(), partition), log_end);
            }
        }
        let engines = Arc::new(Mutex::new(Engines::default()));
        let commits = Arc::new(tokio::sync::Notify::new());
        let ticks = Arc::new(replication::Ticks::default());
        let destinations = Arc::new(mirror::Destinations::load(&*store)?);
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let shell = Shell {
            destinations: destinations.clone(),
            commits: commits.clone(),
            ticks: ticks.clone(),
            store,
            notifier: notifier.clone(),
            engines: engines.clone(),
            watermarks: watermarks.clone(),
            max_group_bytes,
            metrics,
            next_request: 0,
            replication: None,
            group: Group::default(),
            unflushed_since: None,
            unflushed: HashSet::new(),
            // A restart carries on with what an earlier run left.
            draining: true,
        };
        std::thread::Builder::new()
            .name("edgebus-writer".into())
            .spawn(move || shell.run(rx))
            .map_err(|e| StoreError::Backend(format!("spawning the writer thread: {e}")))?;
        Ok(Writer {
            tx,
            engines,
            watermarks,
            notifier,
            commits,
            ticks,
            destinations,
            clustered: Arc::default(),
        })
    }

    /// Queues an append; the receiver resolves when its ack level is met.
    /// With `acks=none` nothing is ever sent and the receiver reports a
    /// closed channel.
    pub async fn append(&self, append: Append) -> oneshot::Receiver<AppendResult> {
        let (reply, rx) = oneshot::channel();
        let reply = (append.acks != AckLevel::None).then_some(reply);
        // If the writer is gone, `reply` is dropped and the receiver reports it.
        let _ = self
            .tx
            .send(Op::Append {
                append: Box::new(append),
                reply,
            })
            .await;
        rx
    }

    /// The base offset of this exact producer batch if it is a retry of a
    /// recent batch the partition stored (or is storing): lets the broker
    /// answer a retry without running an ingest chain again, whose dead
    /// letters and state changes would otherwise happen twice. `None` also
    /// for a partition nothing was appended to since the start, whose
    /// engine is not loaded: the append itself then finds the retry.
    pub fn duplicate_of(
        &self,
        topic: &str,
        partition: u32,
        stamp: ProducerStamp,
        record_count: u32,
    ) -> Option<u64> {
        let engines = self.engines.lock().unwrap_or_else(PoisonError::into_inner);
        engines
            .get(&(topic.to_owned(), partition))
            .and_then(|slot| slot.engine.duplicate_of(stamp, record_count))
    }

    /// Whether an append to the partition may be stored here, so work
    /// done before the append (an ingest chain, its dead letters) can be
    /// skipped for a request that would be refused with `NotLeader`. On a
    /// single node always; on a cluster node only while its replica of the
    /// partition leads (not while it follows, retires or waits, nor for a
    /// partition it holds no copy of).
    pub fn may_lead(&self, topic: &str, partition: u32) -> bool {
        let engines = self.engines.lock().unwrap_or_else(PoisonError::into_inner);
        match engines
            .get(&(topic.to_owned(), partition))
            .map(|s| &s.engine)
        {
            Some(Driver::Cluster(replica)) => replica.role() == RoleKind::Leader,
            Some(Driver::Single(_)) => true,
            None => !self.clustered.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// The leader epoch this node's replica of the partition leads at, if
    /// it leads (a cluster node).
    pub fn leading_epoch(&self, topic: &str, partition: u32) -> Option<i32> {
        let engines = self.engines.lock().unwrap_or_else(PoisonError::into_inner);
        replica(&engines, topic, partition)?.leading_epoch()
    }

    /// On a cluster node whose replica of the partition leads at
    /// `leader_epoch`, the log end and each of `producer_ids`' dedup state
    /// as the engine checks the next append against them; `None`
    /// elsewhere.
    pub fn leader_producer_states(
        &self,
        topic: &str,
        partition: u32,
        leader_epoch: i32,
        producer_ids: impl IntoIterator<Item = i64>,
    ) -> Option<(u64, Vec<(i64, ProducerState)>)> {
        let engines = self.engines.lock().unwrap_or_else(PoisonError::into_inner);
        let replica = replica(&engines, topic, partition)
            .filter(|r| r.leading_epoch() == Some(leader_epoch))?;
        let states = producer_ids
            .into_iter()
            .filter_map(|id| Some((id, replica.leader_producer_state(id)?)))
            .collect();
        Some((replica.log_end(), states))
    }

    /// The partition's high watermark: readers see records below it only.
    /// `None` for a partition that does not exist.
    pub fn high_watermark(&self, topic: &str, partition: u32) -> Option<u64> {
        self.watermarks.get(topic, partition)
    }

    async fn call<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<T>) -> Op,
        stopped: impl Fn() -> T,
    ) -> T {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(op(reply)).await.is_err() {
            return stopped();
        }
        rx.await.unwrap_or_else(|_| stopped())
    }

    /// Stores consumer-group offsets. Every commit waiting when the writer
    /// gets to it shares one transaction and one fsync.
    pub async fn commit_offsets(&self, commits: Vec<OffsetCommit>) -> Result<(), CommitError> {
        self.call(
            |reply| Op::Commit { commits, reply },
            || Err(CommitError::Store(stopped())),
        )
        .await
    }

    /// Commits one exactly-once pipeline step (outputs at offsets their
    /// partition engines choose, plugin state and source position in one
    /// durable transaction). Returns each output's base offset.
    pub async fn commit_pipeline(&self, step: PipelineStep) -> Result<Vec<u64>, StepError> {
        self.call(
            |reply| {
                Op::Ordered(Ordered::Pipeline {
                    step: Box::new(step),
                    reply,
                })
            },
            || Err(StepError::Target(AppendFailure::Stopped)),
        )
        .await
    }

    /// Creates a topic, ordered with the appends around it.
    pub async fn create_topic(&self, spec: TopicSpec) -> Result<(), TopicError> {
        self.call(
            |reply| Op::Ordered(Ordered::CreateTopic { spec, reply }),
            || Err(TopicError::Store(stopped())),
        )
        .await
    }

    /// Deletes a topic after every append queued before, and forgets its
    /// partition engines, so a topic recreated under the name starts anew.
    pub async fn delete_topic(&self, name: String) -> Result<(), TopicError> {
        self.call(
            |reply| Op::Ordered(Ordered::DeleteTopic { name, reply }),
            || Err(TopicError::Store(stopped())),
        )
        .await
    }

    /// Runs retention inside the writer, so it never races an append.
    /// Holds keep undelivered mirror records (see
    /// [`edgebus_store::PartitionLog::enforce_retention_holding`]); they
    /// come back with what each lost.
    pub async fn enforce_retention(
        &self,
        now_ms: i64,
        holds: Vec<RetentionHold>,
    ) -> Result<(RetentionReport, Vec<RetentionHold>), StoreError> {
        self.call(
            |reply| {
                Op::Ordered(Ordered::Retention {
                    now_ms,
                    holds,
                    reply,
                })
            },
            || Err(stopped()),
        )
        .await
    }

    /// Queues a metadata write like [`Writer::run`], but returns as soon
    /// as it is queued, with a receiver for its result: a caller that must
    /// keep its writes in order queues them in turn without waiting on
    /// each (an ingest chain's plugin state, after the batch's records).
    pub async fn queue<T: Send + 'static>(
        &self,
        job: impl FnOnce(&dyn LogStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<oneshot::Receiver<Result<T, StoreError>>, StoreError> {
        let (reply, rx) = oneshot::channel();
        let op = Op::Ordered(Ordered::Run {
            job: Box::new(move |store| {
                let _ = reply.send(job(store));
            }),
        });
        self.tx.send(op).await.map_err(|_| stopped())?;
        Ok(rx)
    }

    /// Runs a metadata write on the writer thread, after every write queued
    /// before it (a pipeline's deletion after its last step, say).
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&dyn LogStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.call(
            |reply| {
                Op::Ordered(Ordered::Run {
                    job: Box::new(move |store| {
                        let _ = reply.send(job(store));
                    }),
                })
            },
            || Err(stopped()),
        )
        .await
    }
}

fn stopped() -> StoreError {
    StoreError::Backend("writer stopped".into())
}

/// What decides a partition's appends: its engine on a single node, its
/// replica (leader or follower around the engine) in a cluster.
enum Driver {
    Single(PartitionEngine),
    Cluster(Replica),
}

impl Driver {
    fn handle_append(&mut self, now: Instant, request: AppendRequest) {
        match self {
            Driver::Single(engine) => engine.handle_append(now, request),
            Driver::Cluster(replica) => replica.handle_append(now, request),
        }
    }

    fn handle_written(
        &mut self,
        now: Instant,
        through: WriteId,
        durable: bool,
    ) -> Result<(), WrittenError> {
        match self {
            Driver::Single(engine) => engine.handle_written(now, through, durable),
            Driver::Cluster(replica) => replica.handle_written(now, through, durable),
        }
    }

    fn handle_write_failed(&mut self, now: Instant) {
        match self {
            Driver::Single(engine) => engine.handle_write_failed(now),
            Driver::Cluster(replica) => replica.handle_write_failed(now),
        }
    }

    fn duplicate_of(&self, stamp: ProducerStamp, record_count: u32) -> Option<u64> {
        match self {
            Driver::Single(engine) => engine.duplicate_of(stamp, record_count),
            Driver::Cluster(replica) => replica.duplicate_of(stamp, record_count),
        }
    }

    /// The offset the next decided append gets.
    fn log_end(&self) -> u64 {
        match self {
            Driver::Single(engine) => engine.log_end(),
            Driver::Cluster(replica) => replica.decided_end(),
        }
    }
}

/// One partition's driver and the replies waiting on it.
struct Slot {
    engine: Driver,
    /// Requests of this partition whose ack is still to come, by id.
    replies: HashMap<u64, oneshot::Sender<AppendResult>>,
    /// The last write reported committed.
    written: Option<WriteId>,
    /// A replica's commands other than its engine's, for
    /// [`Shell::replication_work`].
    replication: Vec<ReplicaCommand>,
    /// The bytes of the batches the last fetch brought, by base offset,
    /// until the replica appends them.
    fetched: HashMap<u64, Bytes>,
    /// The last damage report sent: (offset, partition epoch), and when.
    damage_reported: Option<((u64, u64), Instant)>,
}

impl Slot {
    fn new(engine: Driver) -> Slot {
        Slot {
            engine,
            replies: HashMap::new(),
            written: None,
            replication: Vec::new(),
            fetched: HashMap::new(),
            damage_reported: None,
        }
    }

    /// The engine's commands, in order; a replica's other commands are
    /// kept aside for the replication work. Every input to a replica ends
    /// here, so this is also where its next timer goes to `ticks`.
    fn drain(&mut self, ticks: &replication::Ticks) -> Vec<Command> {
        match &mut self.engine {
            Driver::Single(engine) => engine.drain_commands().collect(),
            Driver::Cluster(replica) => {
                let mut engine = Vec::new();
                while let Some(command) = replica.poll_command() {
                    match command {
                        ReplicaCommand::Engine(command) => engine.push(command),
                        other => self.replication.push(other),
                    }
                }
                if let Some(at) = replica.next_tick(Instant::now()) {
                    ticks.schedule(at);
                }
                engine
            }
        }
    }
}

type Engines = HashMap<Key, Slot>;

/// This cluster node's replica of a partition, if it holds one.
fn replica<'a>(engines: &'a Engines, topic: &str, partition: u32) -> Option<&'a Replica> {
    match &engines.get(&(topic.to_owned(), partition))?.engine {
        Driver::Cluster(replica) => Some(replica),
        Driver::Single(_) => None,
    }
}

/// The writes of one group commit, not yet committed.
#[derive(Default)]
struct Group {
    writes: Vec<LogWrite>,
    /// The last write of each partition in `writes`.
    last: HashMap<Key, WriteId>,
    durable: bool,
    bytes: usize,
    /// Answers due once the group commits: appends that store nothing of
    /// their own but whose dead letters ride in the group.
    after_commit: Vec<(oneshot::Sender<AppendResult>, AppendOutcome)>,
    /// Partitions whose follower appends (a replica's `AppendReplicated`)
    /// ride in the group, told once it is durable.
    replicated: Vec<Key>,
    /// Ingest chains' state changes, stored after the writes.
    state: Vec<StateWrite>,
}

impl Group {
    fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.after_commit.is_empty()
            && self.replicated.is_empty()
            && self.state.is_empty()
    }
}

struct Shell {
    store: Arc<dyn LogStore>,
    /// Mirror destination topics, whose ordinary appends are refused.
    destinations: Arc<mirror::Destinations>,
    notifier: Notifier,
    engines: Arc<Mutex<Engines>>,
    watermarks: Arc<Watermarks>,
    max_group_bytes: usize,
    metrics: Arc<Metrics>,
    next_request: u64,
    /// Notified after every commit.
    commits: Arc<tokio::sync::Notify>,
    /// When the replicas' timers next need running.
    ticks: Arc<replication::Ticks>,
    /// The cluster side, on a cluster node.
    replication: Option<replication::Replication>,
    group: Group,
    /// When the oldest committed write not yet fsync'd was committed.
    unflushed_since: Option<Instant>,
    /// Partitions with committed writes not yet fsync'd.
    unflushed: HashSet<Key>,
    /// Whether deleted topics may have records left to free (see
    /// [`Shell::drain_deleted`]).
    draining: bool,
}

impl Shell {
    fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let mut commits = Vec::new();
        loop {
            let first = match rx.try_recv() {
                Ok(op) => op,
                Err(mpsc::error::TryRecvError::Empty) => {
                    // Idle: make every committed write durable before
                    // sleeping, so readers see it; free deleted records
                    // meanwhile, unless the store is failing.
                    if self.flush() && self.draining {
                        self.drain_deleted();
                        continue;
                    }
                    match rx.blocking_recv() {
                        Some(op) => op,
                        None => return,
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.flush();
                    return;
                }
            };
            let mut next = Some(first);
            while let Some(op) = next.take() {
                match op {
                    Op::Append { append, reply } => self.decide(*append, reply),
                    Op::Commit { commits: c, reply } => commits.push((c, reply)),
                    Op::Ordered(ordered) => {
                        self.commit_group();
                        self.execute(ordered);
                    }
                    Op::Cluster(op) => {
                        if op.needs_group_committed() {
                            self.commit_group();
                        }
                        self.cluster_op(op);
                    }
                }
                if self.group.bytes < self.max_group_bytes
                    && commits.len() < MAX_GROUP_OFFSET_COMMITS
                {
                    next = rx.try_recv().ok();
                }
            }
            self.settle();
            if !commits.is_empty() {
                commit_offsets(&*self.store, &mut commits);
            }
            self.drain_deleted();
            if self
                .unflushed_since
                .is_some_and(|since| since.elapsed() >= FLUSH_INTERVAL)
            {
                self.flush();
            }
        }
    }

    fn execute(&mut self, ordered: Ordered) {
        match ordered {
            Ordered::Retention {
                now_ms,
                mut holds,
                reply,
            } => {
                let report = self.store.enforce_retention_holding(now_ms, &mut holds);
                let _ = reply.send(report.map(|r| (r, holds)));
            }
            Ordered::Pipeline { step, reply } => {
                let _ = reply.send(self.commit_pipeline(*step));
            }
            Ordered::CreateTopic { spec, reply } => {
                let created = self.store.create_topic(&spec);
                if created.is_ok() {
                    for partition in 0..spec.partitions {
                        self.watermarks.set((spec.name.clone(), partition), 0);
                    }
                }
                let _ = reply.send(created);
            }
            Ordered::DeleteTopic { name, reply } => {
                let started = Instant::now();
                let deleted = self.store.delete_topic(&name);
                let elapsed_us = started.elapsed().as_micros() as u64;
                tracing::debug!(topic = %name, elapsed_us, "deleted a topic");
                if deleted.is_ok() {
                    self.draining = true;
                    self.destinations.remove(&name);
                    self.watermarks.remove_topic(&name);
                    self.metrics.traffic.remove_topic(&name);
                    let mut engines = self.lock_engines();
                    engines.retain(|(topic, _), _| *topic != name);
                }
                let _ = reply.send(deleted);
            }
            Ordered::Run { job } => job(&*self.store),
            Ordered::MirrorOpen {
                spec,
                mirror,
                filtered,
                reply,
            } => {
                let _ = reply.send(self.open_mirror(&spec, &mirror, filtered));
            }
            Ordered::MirrorAppend { batches, reply } => {
                let _ = reply.send(self.mirror_append(*batches));
            }
            Ordered::MirrorSkip { skip, reply } => {
                let _ = reply.send(self.mirror_skip(skip));
            }
            Ordered::MirrorCommit { commit, reply } => {
                let _ = reply.send(self.mirror_commit(*commit));
            }
        }
    }

    fn lock_engines(&self) -> std::sync::MutexGuard<'_, Engines> {
        // The engines are only mutated on this thread, between whole
        // calls, so a poisoned lock still guards consistent state.
        self.engines.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Loads a partition's engine from the store if it is not loaded.
    fn load(&self, engines: &mut Engines, key: &Key) -> Result<(), AppendFailure> {
        if engines.contains_key(key) {
            return Ok(());
        }
        if self.replication.is_some() {
            // A cluster partition is driven by its replica, which the
            // control plane's metadata creates; until then nobody here
            // leads it.
            return Err(AppendFailure::NotLeader { leader: None });
        }
        let (topic, partition) = (key.0.as_str(), key.1);
        let log_end = self.store.offsets(topic, partition)?.log_end;
        let epochs = self.store.epochs(topic, partition)?;
        let (leader_epoch, epoch_start) = epochs
            .last()
            .map_or((0, None), |e| (e.epoch, Some(e.start_offset)));
        let producers = self
            .store
            .producer_states(topic, partition)?
            .into_iter()
            .map(|(id, state)| ProducerState::decode(&state).map(|state| (id, state)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                AppendFailure::Storage(format!("producer state of {topic}/{partition}: {e}"))
            })?;
        let state = PartitionState {
            log_end,
            leader_epoch,
            epoch_start,
            producers,
        };
        engines.insert(
            key.clone(),
            Slot::new(Driver::Single(PartitionEngine::new(state, LOCAL_REPLICA))),
        );
        Ok(())
    }

    /// Hands one append (and its dead letters) to their engines, adding the
    /// writes they decide to the group.
    fn decide(&mut self, append: Append, reply: Option<oneshot::Sender<AppendResult>>) {
        let mut group = std::mem::take(&mut self.group);
        self.decide_into(append, reply, &mut group);
        self.group = group;
    }

    /// [`Shell::decide`], adding to `group`.
    fn decide_into(
        &mut self,
        append: Append,
        reply: Option<oneshot::Sender<AppendResult>>,
        group: &mut Group,
    ) {
        group.state.extend(append.state);
        if self.destinations.get(&append.topic).is_some() {
            if let Some(reply) = reply {
                let _ = reply.send(Err(AppendFailure::MirrorDestination(append.topic)));
            }
            return;
        }
        let key = (append.topic.clone(), append.partition);
        let engines = Arc::clone(&self.engines);
        let mut engines = engines.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = self.load(&mut engines, &key) {
            if let Some(reply) = reply {
                let _ = reply.send(Err(e));
            }
            return;
        }
        let request = AppendRequest {
            id: self.next_id(),
            record_count: append.record_count,
            sequence: append.sequence,
            acks: append.acks,
        };
        let idempotent = request
            .sequence
            .is_some_and(|span| span.producer.is_idempotent());
        group.durable |= matches!(append.acks, AckLevel::Durable | AckLevel::All);
        let Some(letters) = append.dead_letters else {
            self.submit(&mut engines, &key, request, append.batch, reply, group);
            return;
        };
        if !idempotent && request.record_count == 0 {
            // Nothing of its own to store, so the engine would answer at
            // once; the answer must wait for the dead letters' commit.
            let base_offset = engines.get(&key).map_or(0, |slot| slot.engine.log_end());
            let request = AppendRequest {
                acks: AckLevel::None,
                ..request
            };
            self.submit(&mut engines, &key, request, append.batch, None, group);
            let written = self.dead_letters(&mut engines, letters, group);
            if let Some(reply) = reply {
                match written {
                    Ok(()) => {
                        let outcome = AppendOutcome::Appended { base_offset };
                        group.after_commit.push((reply, outcome));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            return;
        }
        // An idempotent batch that was not stored is a retry or was refused:
        // its dead letters are stored already or not at all. Any other
        // batch's dead letters are written with it, in its transaction.
        let stored = self.submit(&mut engines, &key, request, append.batch, reply, group);
        if (stored || !idempotent)
            && let Err(e) = self.dead_letters(&mut engines, letters, group)
        {
            // The batch is decided already; only a dead-letter topic
            // deleted since the produce checked it can get here.
            tracing::error!(error = %e, "dead letters dropped");
        }
    }

    /// Appends dead letters at their topic's log end. They are acked with
    /// the batch they came from, so they need no ack of their own.
    fn dead_letters(
        &mut self,
        engines: &mut Engines,
        letters: DeadLetters,
        group: &mut Group,
    ) -> Result<(), AppendFailure> {
        let key = (letters.topic, 0);
        self.load(engines, &key)?;
        let first = engines.get(&key).map(|slot| slot.engine.log_end());
        let mut placed = letters.placed;
        for (batch, record_count) in letters.batches {
            let request = AppendRequest {
                id: self.next_id(),
                record_count,
                sequence: None,
                acks: AckLevel::None,
            };
            if self.submit(engines, &key, request, batch, None, group)
                && let (Some(placed), Some(first)) = (placed.take(), first)
            {
                let _ = placed.send(first);
            }
        }
        Ok(())
    }

    fn next_id(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request
    }

    /// Submits one request to an engine and runs its commands. Returns
    /// whether the engine decided to write it.
    fn submit(
        &self,
        engines: &mut Engines,
        key: &Key,
        request: AppendRequest,
        batch: Bytes,
        reply: Option<oneshot::Sender<AppendResult>>,
        group: &mut Group,
    ) -> bool {
        let Some(slot) = engines.get_mut(key) else {
            return false;
        };
        if let Some(reply) = reply {
            slot.replies.insert(request.id, reply);
        }
        slot.engine.handle_append(Instant::now(), request);
        let mut batch = Some(batch);
        let mut stored = false;
        let commands = slot.drain(&self.ticks);
        for command in commands {
            if let Command::Append {
                id,
                write,
                base_offset,
                record_count,
                leader_epoch,
                producer,
                ..
            } = &command
                && *id == request.id
            {
                stored = true;
                let batch = if *record_count == 0 {
                    Bytes::new()
                } else {
                    batch.take().unwrap_or_default()
                };
                group.bytes += batch.len();
                group.writes.push(LogWrite {
                    topic: key.0.clone(),
                    partition: key.1,
                    base_offset: *base_offset,
                    leader_epoch: *leader_epoch,
                    batch,
                    producer: producer
                        .as_ref()
                        .map(|(id, state)| (*id, Bytes::from(state.encode()))),
                });
                group.last.insert(key.clone(), *write);
            } else {
                self.route(key, slot, command, None);
            }
        }
        stored
    }

    /// Sends an ack to its requester, or publishes a high watermark.
    fn route(&self, key: &Key, slot: &mut Slot, command: Command, failure: Option<&AppendFailure>) {
        route(
            &self.watermarks,
            &self.notifier,
            key,
            slot,
            command,
            failure,
        );
    }

    /// Commits the group, then what its commit set off (a follower's next
    /// fetch, which may bring appends for the next group), until nothing
    /// waits to be stored.
    fn settle(&mut self) {
        loop {
            self.commit_group();
            self.replication_work();
            if self.group.is_empty() {
                return;
            }
        }
    }

    /// Commits the group, if it has writes, and tells the engines and
    /// replicas.
    fn commit_group(&mut self) {
        let group = std::mem::take(&mut self.group);
        if group.writes.is_empty() && group.state.is_empty() {
            for (reply, outcome) in group.after_commit {
                let _ = reply.send(Ok(outcome));
            }
            return;
        }
        // A cluster leader makes a durable group visible before its fsync,
        // so followers fetch it while it syncs: an `acks=all` ack then
        // waits for the slower of the two fsyncs, not their sum. Nothing
        // is acknowledged or shown to readers before the sync that
        // follows (the high watermark counts only the leader's durable
        // end), and a leader that crashes in between lost only unacked
        // writes, which followers that copied them keep or truncate by
        // epoch like any other.
        let early = group.durable && self.replication.is_some() && !group.last.is_empty();
        let durable = group.durable && !early;
        let started = Instant::now();
        let outcome = self
            .store
            .append_with_state(&group.writes, &group.state, durable);
        let elapsed = started.elapsed();
        tracing::trace!(
            batches = group.writes.len(),
            durable,
            elapsed_us = elapsed.as_micros() as u64,
            "group commit"
        );
        self.metrics
            .writer
            .group_commit(group.writes.len(), elapsed, durable);
        let stored = match &outcome {
            Ok(()) => {
                self.count_appended(&group.writes);
                self.written(group.last, durable);
                !early || self.flush()
            }
            Err(e) => {
                self.failed(&group.last, e);
                false
            }
        };
        self.replicated(&group.replicated, stored);
        for (reply, answer) in group.after_commit {
            let answer = match &outcome {
                Ok(()) => Ok(answer),
                Err(e) => Err(write_failure(e)),
            };
            let _ = reply.send(answer);
        }
    }

    /// Counts committed batches in their partitions' traffic.
    fn count_appended(&self, writes: &[LogWrite]) {
        for w in writes {
            let batch = std::slice::from_ref(&w.batch);
            self.metrics.traffic.appended(&w.topic, w.partition, batch);
        }
    }

    /// Reports committed writes to their engines. A durable commit makes
    /// every earlier commit durable too, so it is reported to every engine
    /// with writes not yet durable.
    fn written(&mut self, mut last: HashMap<Key, WriteId>, durable: bool) {
        let engines = Arc::clone(&self.engines);
        let mut engines = engines.lock().unwrap_or_else(PoisonError::into_inner);
        if durable {
            for key in std::mem::take(&mut self.unflushed) {
                if let Some(write) = engines.get(&key).and_then(|slot| slot.written) {
                    last.entry(key).or_insert(write);
                }
            }
        } else {
            self.unflushed.extend(last.keys().cloned());
        }
        // Every high watermark moves before any ack goes out, so a producer
        // that hears back reads what the commit made visible, dead letters
        // in another partition included.
        let mut acks = Vec::new();
        for (key, write) in last {
            let Some(slot) = engines.get_mut(&key) else {
                continue;
            };
            slot.written = Some(write);
            if let Err(e) = slot.engine.handle_written(Instant::now(), write, durable) {
                tracing::error!(error = %e, topic = %key.0, partition = key.1, "engine refused a write report");
            }
            let commands = slot.drain(&self.ticks);
            for command in commands {
                match command {
                    Command::HighWatermark(_) => self.route(&key, slot, command, None),
                    ack => acks.push((key.clone(), ack)),
                }
            }
        }
        for (key, ack) in acks {
            if let Some(slot) = engines.get_mut(&key) {
                self.route(&key, slot, ack, None);
            }
        }
        if durable {
            self.unflushed_since = None;
        } else if self.unflushed_since.is_none() {
            self.unflushed_since = Some(Instant::now());
        }
        self.commits.notify_waiters();
    }

    /// Reports a failed group commit: its writes are rolled back and their
    /// requests fail. After an IO error the store reopens itself, back to
    /// its last durable commit, so every engine is dropped (failing what
    /// still waits on it) and reloaded from the store on next use.
    ///
    /// A cluster node stops instead, as a Kafka broker halts on a failed log
    /// directory: followers may already hold writes this node committed
    /// without an fsync, and a replica reloaded at the same leader epoch
    /// could put other batches at their offsets. Restarted, the node
    /// registers a new incarnation, so its partitions are led at new
    /// epochs and it truncates by epoch like after any crash.
    fn failed(&mut self, last: &HashMap<Key, WriteId>, error: &WriteError) {
        tracing::error!(error = %error, "write failed");
        let io = matches!(error, WriteError::Store(e) if reopens(e));
        if io {
            self.stop_if_cluster(error);
            // The store went back to its last durable commit, which may
            // have deleted records left to free again.
            self.draining = true;
        }
        let failure = write_failure(error);
        let engines = Arc::clone(&self.engines);
        let mut engines = engines.lock().unwrap_or_else(PoisonError::into_inner);
        for key in last.keys() {
            if let Some(slot) = engines.get_mut(key) {
                slot.engine.handle_write_failed(Instant::now());
                self.drain(key, slot, Some(&failure));
            }
        }
        if io {
            for (_, slot) in engines.drain() {
                for (_, reply) in slot.replies {
                    let _ = reply.send(Err(failure.clone()));
                }
            }
            self.unflushed_since = None;
            self.unflushed.clear();
        }
    }

    /// Stops a cluster node whose store failed and reopened (see
    /// [`Shell::failed`]); a single node carries on.
    fn stop_if_cluster(&self, error: &dyn std::fmt::Display) {
        if self.replication.is_some() {
            tracing::error!(
                error = %error,
                "the store failed: stopping this cluster node (restart it to rejoin)"
            );
            std::process::exit(STORE_FAILED_EXIT);
        }
    }

    fn drain(&self, key: &Key, slot: &mut Slot, failure: Option<&AppendFailure>) {
        let commands = slot.drain(&self.ticks);
        for command in commands {
            self.route(key, slot, command, failure);
        }
    }

    /// Frees one step of deleted topics' records (about
    /// [`DELETE_STEP_BYTES`]) if any are left: a large topic's deletion
    /// runs between groups instead of holding every partition's appends
    /// up until all its pages are freed. The step is not fsync'd itself.
    fn drain_deleted(&mut self) {
        if !self.draining {
            return;
        }
        let started = Instant::now();
        let step = self.store.drain_deleted(DELETE_STEP_BYTES);
        let elapsed_us = started.elapsed().as_micros() as u64;
        tracing::trace!(elapsed_us, ?step, "freed deleted records");
        match step {
            Ok(more) => {
                self.draining = more;
                self.unflushed_since.get_or_insert_with(Instant::now);
            }
            Err(e) => {
                tracing::error!(error = %e, "freeing a deleted topic's records failed");
                if reopens(&e) {
                    self.failed(&HashMap::new(), &WriteError::Store(e));
                }
                // Tried again at the next deletion, reopen after another
                // write or start, not at once against a failing store.
                self.draining = false;
            }
        }
    }

    /// Makes every committed write durable with one fsync'd (empty)
    /// transaction, releasing the acks and the high watermark waiting on it.
    /// Returns whether every commit is durable now.
    fn flush(&mut self) -> bool {
        if self.unflushed_since.is_none() {
            return true;
        }
        let started = Instant::now();
        let outcome = self.store.append_at(&[], true);
        self.metrics.writer.commit(started.elapsed(), true);
        match outcome {
            Ok(()) => {
                self.written(HashMap::new(), true);
                true
            }
            Err(e) => {
                self.failed(&HashMap::new(), &e);
                false
            }
        }
    }

    /// Rolls back the outputs of a refused pipeline step decided so far:
    /// nothing of it is written.
    fn roll_back(&self, engines: &mut Engines, decided: &Group) {
        for key in decided.last.keys() {
            if let Some(slot) = engines.get_mut(key) {
                slot.engine.handle_write_failed(Instant::now());
                let refused = AppendFailure::Storage("pipeline step refused".into());
                self.drain(key, slot, Some(&refused));
            }
        }
    }

    /// Decides the offsets of a pipeline step's outputs and commits them
    /// with its state and position in one durable transaction.
    fn commit_pipeline(&mut self, step: PipelineStep) -> Result<Vec<u64>, StepError> {
        self.commit_step(step, None)
    }

    /// [`Shell::commit_pipeline`]; outputs to a mirror destination are
    /// refused unless `mirror` is the mirror it is bound to (a filtered
    /// link commits its output and checkpoint as a step).
    fn commit_step(
        &mut self,
        step: PipelineStep,
        mirror: Option<&str>,
    ) -> Result<Vec<u64>, StepError> {
        let engines = Arc::clone(&self.engines);
        let mut engines = engines.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((topic, epoch)) = &step.fence
            && replica(&engines, topic, 0).and_then(Replica::leading_epoch) != Some(*epoch)
        {
            return Err(StepError::Target(AppendFailure::NotLeader { leader: None }));
        }
        let mut decided = Group::default();
        for output in step.outputs {
            let key = (output.topic, output.partition);
            let loaded = match self.destinations.get(&key.0) {
                Some(bound) if Some(bound.as_str()) != mirror => {
                    Err(AppendFailure::MirrorDestination(key.0.clone()))
                }
                _ => self.load(&mut engines, &key),
            };
            if let Err(e) = loaded {
                self.roll_back(&mut engines, &decided);
                return Err(StepError::Target(e));
            }
            // With an ack level, an output not stored is answered: refused
            // or a duplicate (below).
            let (reply, mut answer) = oneshot::channel();
            let request = AppendRequest {
                id: self.next_id(),
                record_count: output.record_count,
                sequence: output.sequence,
                acks: AckLevel::Leader,
            };
            if self.submit(
                &mut engines,
                &key,
                request,
                output.batch,
                Some(reply),
                &mut decided,
            ) {
                continue;
            }
            // Refusals are answered at once. A duplicate is answered once
            // the output it repeats is written: at once, or with this
            // step's transaction when that output is part of it.
            let refused = match answer.try_recv() {
                Ok(Err(e)) => e,
                Err(oneshot::error::TryRecvError::Closed) => {
                    AppendFailure::Storage("a pipeline output was not stored".into())
                }
                Ok(Ok(_)) | Err(oneshot::error::TryRecvError::Empty) => continue,
            };
            self.roll_back(&mut engines, &decided);
            return Err(StepError::Target(refused));
        }
        drop(engines);
        let Group { writes, last, .. } = decided;
        let base_offsets = writes.iter().map(|w| w.base_offset).collect();
        let commit = PipelineCommit {
            pipeline: step.pipeline,
            writes,
            state: step.state,
            source_partition: step.source_partition,
            source_next_offset: step.source_next_offset,
        };
        match self.store.commit_pipeline(&commit) {
            Ok(()) => {
                self.count_appended(&commit.writes);
                self.written(last, true);
                Ok(base_offsets)
            }
            Err(e) => {
                self.failed(&last, &e);
                Err(StepError::Store(e))
            }
        }
    }
}

/// The answer for appends whose transaction failed with `error`.
/// Sends an ack to its requester, or publishes a high watermark; from the
/// writer thread, or beside it (a follower's fetch, see
/// [`Writer::serve_fetch`]), always under the engines' lock.
fn route(
    watermarks: &Watermarks,
    notifier: &Notifier,
    key: &Key,
    slot: &mut Slot,
    command: Command,
    failure: Option<&AppendFailure>,
) {
    match command {
        Command::Ack { id, result } => {
            if let Some(reply) = slot.replies.remove(&id) {
                let _ = reply.send(result.map_err(|e| failure_of(e, failure)));
            }
        }
        Command::HighWatermark(high_watermark) => {
            watermarks.set(key.clone(), high_watermark);
            notifier.publish(&key.0, key.1, high_watermark);
        }
        Command::Append { .. } => {
            // Only the request being submitted emits an Append, and
            // `submit` takes it.
            tracing::error!(topic = %key.0, partition = key.1, "unexpected append command");
        }
    }
}

fn write_failure(error: &WriteError) -> AppendFailure {
    match error {
        WriteError::Store(StoreError::DiskFull(detail)) => AppendFailure::DiskFull(detail.clone()),
        other => AppendFailure::Storage(other.to_string()),
    }
}

/// The writer's answer for an engine's failed ack.
fn failure_of(error: AppendError, failure: Option<&AppendFailure>) -> AppendFailure {
    match error {
        AppendError::Refused(refused) => AppendFailure::Refused(refused),
        AppendError::StorageFailed => failure
            .cloned()
            .unwrap_or_else(|| AppendFailure::Storage("the write failed".into())),
        AppendError::Truncated { offset } => {
            AppendFailure::Storage(format!("the log was truncated at {offset}"))
        }
        AppendError::NotLeader => AppendFailure::NotLeader { leader: None },
        e @ (AppendError::NotEnoughReplicas { .. }
        | AppendError::NotEnoughReplicasAfterAppend { .. }) => {
            AppendFailure::NotEnoughReplicas(e.to_string())
        }
        other => AppendFailure::Storage(other.to_string()),
    }
}

type PendingCommit = (Vec<OffsetCommit>, oneshot::Sender<Result<(), CommitError>>);

/// Stores every waiting offset commit in one transaction. If the store
/// refuses the whole group because of one request (an unknown topic), each
/// request is retried alone so the others still land.
fn commit_offsets(store: &dyn LogStore, pending: &mut Vec<PendingCommit>) {
    let all: Vec<OffsetCommit> = pending
        .iter()
        .flat_map(|(c, _)| c.iter().cloned())
        .collect();
    match store.commit_offsets(&all) {
        Ok(()) => {
            for (_, reply) in pending.drain(..) {
                let _ = reply.send(Ok(()));
            }
        }
        Err(CommitError::Store(e)) => {
            for (_, reply) in pending.drain(..) {
                let _ = reply.send(Err(CommitError::Store(e.clone())));
            }
        }
        Err(_) => {
            for (commits, reply) in pending.drain(..) {
                let _ = reply.send(store.commit_offsets(&commits));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use edgebus_core::sourced;
    use edgebus_proto::batch::{BatchBuilder, Record};
    use edgebus_store::TopicSpec;
    use edgebus_store::mem::MemStore;

    use super::*;

    /// A step of pipeline "p" over source offsets `start..end` of
    /// partition 0, with one output stamped to cover them.
    fn step(start: u64, end: u64) -> PipelineStep {
        let span = sourced::span(sourced::producer_id(1, 0), start, end).unwrap();
        let mut builder = BatchBuilder::new();
        builder.push(&Record::new(format!("{start}..{end}"), 0));
        PipelineStep {
            pipeline: "p".into(),
            outputs: vec![Output {
                topic: "out".into(),
                partition: 0,
                batch: builder.finish(span.producer),
                record_count: 1,
                sequence: Some(span),
            }],
            state: vec![(b"k".to_vec(), Some(format!("{end}").into_bytes()))],
            source_partition: 0,
            source_next_offset: end,
            fence: None,
        }
    }

    #[tokio::test]
    async fn a_stamped_pipeline_step_stores_each_output_once_and_a_refused_one_nothing() {
        let store: Arc<dyn LogStore> = Arc::new(MemStore::new());
        let metrics = Arc::new(Metrics::default());
        let writer = Writer::spawn(store.clone(), Notifier::default(), 1 << 20, metrics).unwrap();
        let spec = TopicSpec::new("out", 1).with_max_message_bytes(1 << 20);
        writer.create_topic(spec).await.unwrap();
        let log_end = || store.offsets("out", 0).unwrap().log_end;
        let position = || store.pipeline_positions("p").unwrap();
        let state = || store.pipeline_state("p", b"k").unwrap().unwrap();

        assert_eq!(writer.commit_pipeline(step(0, 5)).await.unwrap(), [0]);
        assert_eq!(writer.commit_pipeline(step(5, 9)).await.unwrap(), [1]);
        // The same span again, as a runner resuming behind its outputs
        // sends it: nothing stored again, the position still moves.
        assert_eq!(
            writer.commit_pipeline(step(5, 9)).await.unwrap(),
            Vec::<u64>::new()
        );
        assert_eq!((log_end(), position()), (2, vec![(0, 9)]));
        // Overlapping what is stored, or leaving a gap after it: refused,
        // and neither the output nor the position nor the state lands.
        for (start, end) in [(3, 12), (10, 12)] {
            let refused = writer.commit_pipeline(step(start, end)).await;
            assert!(
                matches!(refused, Err(StepError::Target(AppendFailure::Refused(_)))),
                "{start}..{end}: {refused:?}"
            );
            assert_eq!((log_end(), position()), (2, vec![(0, 9)]));
            assert_eq!(state(), b"9");
        }
        assert_eq!(writer.commit_pipeline(step(9, 12)).await.unwrap(), [2]);
        assert_eq!((log_end(), position()), (3, vec![(0, 12)]));
        // A step fenced to a leader epoch commits only while this node's
        // copy leads at it; a single node's never does.
        let fenced = PipelineStep {
            fence: Some(("out".into(), 0)),
            ..step(12, 14)
        };
        assert!(matches!(
            writer.commit_pipeline(fenced).await,
            Err(StepError::Target(AppendFailure::NotLeader { .. }))
        ));
        assert_eq!((log_end(), position()), (3, vec![(0, 12)]));
    }
}
