//! # edgebus-store
//!
//! Partition logs on disk. One trait, [`LogStore`], is the seam between the
//! broker and storage; [`RedbStore`] is the real implementation (one redb
//! file per node) and [`MemStore`] an in-memory one with fault injection.
//! Both pass the same [`conformance`] suite.
//!
//! ```text
//!   broker writer task ──append(group)──▶ LogStore ──▶ redb write txn ──▶ fsync
//!   fetch / subscribe  ──read──────────▶ LogStore ──▶ redb read txn (MVCC)
//! ```
//!
//! The store is synchronous: redb is, and the broker calls it from a
//! dedicated writer thread and from blocking tasks.
//!
//! ## Layout
//!
//! - [`topic`]: topic validation and defaults.
//! - [`group`]: consumer-group name validation.
//! - [`dedup`]: the idempotent-producer sequence check, shared by both stores.
//! - `plugin`: the stored form of a registered plugin's description.
//! - [`redb_store`]: [`RedbStore`], its tables, and its reopen after IO
//!   errors.
//! - [`mem`]: [`MemStore`] with fail-after-N-writes.
//! - [`conformance`]: the suite every store must pass.
#![warn(missing_docs)]

use bytes::Bytes;
use edgebus_proto::batch::{BatchHeader, ProducerStamp};
pub use edgebus_proto::frame::TopicSpec;

pub mod conformance;
pub mod dedup;
pub mod group;
pub mod mem;
mod plugin;
pub mod redb_store;
pub mod topic;

pub use mem::MemStore;
pub use redb_store::RedbStore;

/// One batch to append, already validated by the caller with
/// [`edgebus_proto::batch::validate`].
#[derive(Debug, Clone)]
pub struct Append {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// The encoded batch; its base offset is assigned by the store.
    pub batch: Bytes,
    /// The batch's parsed header.
    pub header: BatchHeader,
    /// The producer sequence this append consumes, when it is not the
    /// batch's own: an ingest plugin chain may have dropped or rewritten the
    /// producer's records, yet the producer's next batch still follows the
    /// original. `None` uses `header.producer` and `header.record_count`.
    ///
    /// With `Some`, `batch` may be empty: nothing is appended, the
    /// producer's sequence still advances (every record was dropped, or the
    /// batch was rejected), and the outcome carries the current log end.
    pub sequence: Option<SequenceSpan>,
}

/// The idempotent-producer sequence range an append accounts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceSpan {
    /// Producer id, epoch and first sequence, as the producer sent them.
    pub producer: ProducerStamp,
    /// How many sequence numbers the producer's batch used.
    pub record_count: u32,
}

impl Append {
    /// Checks, cheaply, that the batch bytes match the parsed header and hold
    /// records, so a store can trust `header.record_count` to advance the log
    /// end and can overwrite the base offset in place. The full check
    /// (CRC, every record) is the caller's [`edgebus_proto::batch::validate`].
    ///
    /// A sequence-only append (see [`Append::sequence`]) has no bytes to
    /// check, but its span must cover at least one sequence number: an empty
    /// span would make the producer's last sequence precede its first.
    pub(crate) fn check_shape(&self) -> Result<(), AppendError> {
        if self.sequence.is_some_and(|span| span.record_count == 0) {
            return Err(AppendError::InvalidBatch(
                "sequence span holds no records".to_owned(),
            ));
        }
        if self.is_sequence_only() {
            return Ok(());
        }
        let parsed = BatchHeader::parse(&self.batch)
            .map_err(|e| AppendError::InvalidBatch(e.to_string()))?;
        let expected = BatchHeader {
            base_offset: parsed.base_offset,
            ..self.header
        };
        if parsed != expected {
            return Err(AppendError::InvalidBatch(
                "header does not match the batch bytes".to_owned(),
            ));
        }
        if parsed.total_len() != self.batch.len() {
            return Err(AppendError::InvalidBatch(format!(
                "batch is {} bytes, its header says {}",
                self.batch.len(),
                parsed.total_len()
            )));
        }
        if parsed.record_count == 0 {
            return Err(AppendError::InvalidBatch("no records".to_owned()));
        }
        Ok(())
    }

    /// Whether this append only advances a producer's sequence and writes
    /// nothing to the log.
    pub(crate) fn is_sequence_only(&self) -> bool {
        self.sequence.is_some() && self.batch.is_empty()
    }

    /// The sequence range the dedup check and record use: the explicit
    /// [`Append::sequence`], else the batch's own stamp and record count.
    pub(crate) fn dedup_span(&self) -> SequenceSpan {
        self.sequence.unwrap_or(SequenceSpan {
            producer: self.header.producer,
            record_count: self.header.record_count,
        })
    }
}

/// What happened to one append of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored at this base offset.
    Appended {
        /// Offset of the first record.
        base_offset: u64,
    },
    /// A retry of a batch already stored at this base offset; nothing written.
    Duplicate {
        /// Offset of the first record of the original batch.
        base_offset: u64,
    },
}

impl AppendOutcome {
    /// Base offset of the stored batch, new or original.
    pub fn base_offset(&self) -> u64 {
        match self {
            AppendOutcome::Appended { base_offset } | AppendOutcome::Duplicate { base_offset } => {
                *base_offset
            }
        }
    }
}

/// Why one append of a group was refused. The others in the group are not
/// affected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
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
    /// The producer's epoch is older than the one stored.
    #[error("producer {producer_id} epoch {epoch} is fenced by epoch {current}")]
    ProducerFenced {
        /// Producer id.
        producer_id: i64,
        /// Epoch of the batch.
        epoch: i16,
        /// Epoch the store knows.
        current: i16,
    },
    /// The batch's sequence is not the next one expected, and is not a
    /// retry of a recent batch.
    #[error("out-of-order sequence {got} for producer {producer_id}, expected {expected}")]
    OutOfOrderSequence {
        /// Producer id.
        producer_id: i64,
        /// Sequence expected next.
        expected: i32,
        /// Sequence received.
        got: i32,
    },
    /// The batch bytes disagree with the parsed header, or the batch holds
    /// no records; storing it could break offset density.
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// A retry of a batch too old to still be in the dedup window.
    #[error("duplicate of an old batch of producer {producer_id} (sequence {sequence})")]
    StaleDuplicate {
        /// Producer id.
        producer_id: i64,
        /// Sequence received.
        sequence: i32,
    },
}

/// Why a topic operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// A topic with that name exists.
    #[error("topic {0:?} already exists")]
    Exists(String),
    /// No such topic.
    #[error("unknown topic {0:?}")]
    NotFound(String),
    /// The name or a setting is invalid.
    #[error("invalid topic: {0}")]
    Invalid(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
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
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a consumer-group offset commit was refused. A refused commit applied
/// none of its entries.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// An entry names a topic that does not exist.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// An entry names a partition its topic does not have.
    #[error("topic {topic:?} has no partition {partition}")]
    UnknownPartition {
        /// Topic name.
        topic: String,
        /// Requested partition.
        partition: u32,
    },
    /// An entry's group name breaks the rules of [`group::validate_name`];
    /// holds the reason, naming the rule broken.
    #[error("invalid group: {0}")]
    InvalidGroup(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The storage layer failed. A failed write transaction applied nothing
/// (but see [`StoreError::Io`] for a failure at the very end of a commit).
///
/// `Clone`, so a writer that failed a group commit can hand the same error,
/// variant intact, to every request that shared the transaction.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// redb failed for a reason other than IO (an unexpected table layout,
    /// an internal error).
    #[error("storage: {0}")]
    Backend(String),
    /// The file or device failed an IO call: a full disk, a failing drive.
    /// The store recovers by itself (see [`redb_store`]), so the same call
    /// may succeed once the cause is gone; callers should retry with
    /// backoff.
    ///
    /// A write that failed this way is atomic like any other, but its
    /// outcome is unknown in one case: when the IO failed at the very end of
    /// the commit (the final fsync), the commit may be on disk anyway and be
    /// found after the reopen, as after a crash at that moment. A retry is
    /// still safe where retries are: an idempotent producer's batch comes
    /// back as a duplicate, an offset commit simply applies again.
    #[error("storage IO: {0}")]
    Io(String),
    /// The store is between two opens of its file while it recovers from an
    /// IO error, or could not finish switching to the new open; nothing was
    /// read or written. Retry with backoff.
    #[error("storage recovering from an IO error: {0}")]
    Recovering(String),
    /// Stored bytes failed validation.
    #[error("corrupt data in {table}: {detail}")]
    Corrupt {
        /// Where.
        table: String,
        /// What.
        detail: String,
    },
    /// A fault injected by a test.
    #[error("injected fault after {0} writes")]
    Injected(u64),
}

/// The offsets bounding a partition's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartitionOffsets {
    /// Oldest retained offset (equals `log_end` when the log is empty).
    pub log_start: u64,
    /// Offset the next appended record gets.
    pub log_end: u64,
}

/// Batches read from a partition.
#[derive(Debug, Clone, Default)]
pub struct ReadBatches {
    /// Whole batches in offset order, base offsets filled in.
    pub batches: Vec<Bytes>,
    /// The partition's offsets as of the read transaction.
    pub offsets: PartitionOffsets,
}

/// What a retention pass deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionReport {
    /// Whole batches deleted.
    pub batches: u64,
    /// Bytes of those batches.
    pub bytes: u64,
}

/// The storage seam of the broker.
///
/// Invariants every implementation keeps (and [`conformance`] checks):
/// offsets are dense and never reused, a committed append survives reopen,
/// a failed `append` applies nothing, dedup state commits together with
/// the batches it describes, and a pipeline step's outputs, plugin state
/// and source position commit together or not at all.
pub trait LogStore: Send + Sync + 'static {
    /// Creates a topic with all its partitions, empty.
    fn create_topic(&self, spec: &TopicSpec) -> Result<(), TopicError>;

    /// Deletes a topic, its records, its dedup state and every group's
    /// committed offsets for it, in one transaction: a topic recreated under
    /// the same name starts at offset 0, and an old committed offset must
    /// not point a group into the new log.
    fn delete_topic(&self, name: &str) -> Result<(), TopicError>;

    /// All topics, sorted by name.
    fn topics(&self) -> Result<Vec<TopicSpec>, StoreError>;

    /// One topic's configuration.
    fn topic(&self, name: &str) -> Result<Option<TopicSpec>, StoreError>;

    /// Appends a group of batches, from any topics and partitions, in one
    /// transaction (group commit). Batches for one partition are applied in
    /// slice order. The transaction is fsync'd before returning when
    /// `durable` is true.
    ///
    /// Returns one result per input. `Err` means the transaction failed and
    /// nothing was applied.
    fn append(
        &self,
        appends: &[Append],
        durable: bool,
    ) -> Result<Vec<Result<AppendOutcome, AppendError>>, StoreError>;

    /// Reads whole batches starting with the one holding `from`, stopping
    /// before `max_bytes` would be exceeded, but always returning at least
    /// one batch when any exists at or after `from`. A `from` below the log
    /// start reads from the log start.
    fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_bytes: usize,
    ) -> Result<ReadBatches, ReadError>;

    /// The partition's log start and end.
    fn offsets(&self, topic: &str, partition: u32) -> Result<PartitionOffsets, ReadError>;

    /// The base offset of the first batch that may hold a record stamped at
    /// or after `timestamp_ms`, or the log end if there is none.
    fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<u64, ReadError>;

    /// Allocates a new producer id, durably, so no id is handed out twice.
    fn allocate_producer_id(&self) -> Result<i64, StoreError>;

    /// Deletes whole batches that retention allows deleting as of `now_ms`:
    /// batches whose max timestamp is older than `retention.ms`, and the
    /// oldest batches while a partition exceeds `retention.bytes`. Never
    /// deletes a batch that neither rule covers.
    fn enforce_retention(&self, now_ms: i64) -> Result<RetentionReport, StoreError>;

    /// Stores committed consumer-group offsets, all in one durable
    /// transaction (the broker's writer passes every commit that is waiting,
    /// from any group, so one fsync serves them all). A later commit for the
    /// same (group, topic, partition) replaces the earlier one, in slice
    /// order. Fencing by generation is the coordinator's job, not the
    /// store's, and so is checking the offset against the log: Kafka lets a
    /// group commit any offset.
    ///
    /// All or nothing: if any entry has an invalid group name or names an
    /// unknown topic or partition, the call is refused with the first such
    /// error (every group name is checked before any topic) and no entry is
    /// stored, so one stale commit cannot half-apply a batch the writer
    /// gathered from many groups. An empty slice is a
    /// no-op that touches no storage.
    fn commit_offsets(&self, commits: &[OffsetCommit]) -> Result<(), CommitError>;

    /// Every committed offset of a group, sorted by topic and partition.
    /// Empty for a group without offsets (or with an invalid name).
    fn committed_offsets(&self, group: &str) -> Result<Vec<CommittedOffset>, StoreError>;

    /// Names of all groups with at least one committed offset, sorted.
    fn groups(&self) -> Result<Vec<String>, StoreError>;

    /// Removes every committed offset of a group, durably. Returns whether
    /// it had any.
    fn delete_group(&self, group: &str) -> Result<bool, StoreError>;

    /// The base offset of this exact producer batch (producer id, epoch and
    /// sequence range) if it is among the recent batches stored in the
    /// partition: the batch is a retry. Lets the broker answer a retry
    /// without running an ingest chain again, whose dead letters and state
    /// changes would otherwise happen twice.
    fn stored_batch(
        &self,
        topic: &str,
        partition: u32,
        producer: ProducerStamp,
        record_count: u32,
    ) -> Result<Option<u64>, StoreError>;

    /// Stores a plugin's component bytes under `name`, durably. A new name
    /// gets version 1; replacing bumps the version and keeps only the new
    /// bytes.
    fn put_plugin(
        &self,
        name: &str,
        kind: &str,
        hash: &str,
        wasm: &[u8],
        now_ms: i64,
    ) -> Result<PluginInfo, StoreError>;

    /// A plugin's description and bytes.
    fn plugin(&self, name: &str) -> Result<Option<(PluginInfo, Vec<u8>)>, StoreError>;

    /// Every plugin, sorted by name, without bytes.
    fn plugins(&self) -> Result<Vec<PluginInfo>, StoreError>;

    /// Removes a plugin. Returns whether it existed. Refusing to remove a
    /// plugin in use is the broker's job.
    fn remove_plugin(&self, name: &str) -> Result<bool, StoreError>;

    /// Stores (`Some`) or deletes (`None`) a broker configuration blob, such
    /// as a topic's ingest chain or a pipeline definition, durably.
    fn put_config(
        &self,
        kind: ConfigKind,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<(), StoreError>;

    /// Every blob of a kind, sorted by key.
    fn configs(&self, kind: ConfigKind) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Commits one pipeline step in ONE durable transaction: the output
    /// appends, the plugin state changes, and the source position. All or
    /// nothing: if any append is refused, nothing is applied. This is what
    /// makes pipelines exactly-once: after a crash, the stored position,
    /// state and outputs always agree.
    ///
    /// Returns the base offset of each append.
    fn commit_pipeline(&self, commit: &PipelineCommit) -> Result<Vec<u64>, PipelineError>;

    /// A pipeline's next source offset per source partition, sorted.
    fn pipeline_positions(&self, pipeline: &str) -> Result<Vec<(u32, u64)>, StoreError>;

    /// A pipeline's stored plugin state under `key`.
    fn pipeline_state(&self, pipeline: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Deletes a pipeline's positions and state.
    fn delete_pipeline_data(&self, pipeline: &str) -> Result<(), StoreError>;
}

/// A stored plugin's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// Registry name.
    pub name: String,
    /// 1 for the first upload, then +1 per replacement.
    pub version: u32,
    /// Hex SHA-256 of the component bytes.
    pub hash: String,
    /// `filter` or `transform`.
    pub kind: String,
    /// Size of the component.
    pub size_bytes: u64,
    /// When this version was stored (ms since the Unix epoch).
    pub added_ms: i64,
}

/// Kinds of broker configuration blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConfigKind {
    /// A topic's ingest plugin chain, keyed by topic. Deleted with the topic.
    Ingest,
    /// A pipeline definition, keyed by pipeline name.
    Pipeline,
}

impl ConfigKind {
    /// The kind's number in stored keys. Stored data outlives code, so a
    /// number is never reassigned, even when its kind is retired.
    pub(crate) fn tag(self) -> u8 {
        match self {
            ConfigKind::Ingest => 1,
            ConfigKind::Pipeline => 2,
        }
    }
}

/// One exactly-once pipeline step.
#[derive(Debug, Clone)]
pub struct PipelineCommit {
    /// Pipeline name.
    pub pipeline: String,
    /// Output batches (and dead letters), without idempotence stamps.
    pub appends: Vec<Append>,
    /// Plugin state changes in order: `Some` sets, `None` deletes.
    pub state: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// The source partition this step read.
    pub source_partition: u32,
    /// The next source offset to read after this step.
    pub source_next_offset: u64,
}

/// Why a pipeline step was not committed. Nothing of it was applied.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// An output append was refused.
    #[error("output {index}: {error}")]
    Append {
        /// Index into `PipelineCommit::appends`.
        index: usize,
        /// Why.
        error: AppendError,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The base offset of each of a pipeline step's appends, or the first
/// refusal: a step commits whole or not at all, so one refused output
/// refuses the step.
pub(crate) fn pipeline_base_offsets(
    results: Vec<Result<AppendOutcome, AppendError>>,
) -> Result<Vec<u64>, PipelineError> {
    results
        .into_iter()
        .enumerate()
        .map(|(index, result)| {
            result
                .map(|outcome| outcome.base_offset())
                .map_err(|error| PipelineError::Append { index, error })
        })
        .collect()
}

/// One committed offset to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommit {
    /// Consumer group.
    pub group: String,
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// The next offset the group will read (Kafka's convention: the offset
    /// after the last processed record).
    pub offset: u64,
}

/// One committed offset as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// The next offset the group will read.
    pub offset: u64,
}
