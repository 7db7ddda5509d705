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
//! - [`dedup`]: the idempotent-producer sequence check, shared by both stores.
//! - [`redb_store`]: [`RedbStore`] and its tables.
//! - [`mem`]: [`MemStore`] with fail-after-N-writes.
//! - [`conformance`]: the suite every store must pass.
#![warn(missing_docs)]

use bytes::Bytes;
use edgebus_proto::batch::BatchHeader;
pub use edgebus_proto::frame::TopicSpec;

pub mod conformance;
pub mod dedup;
pub mod mem;
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
}

impl Append {
    /// Checks, cheaply, that the batch bytes match the parsed header and hold
    /// records, so a store can trust `header.record_count` to advance the log
    /// end and can overwrite the base offset in place. The full check
    /// (CRC, every record) is the caller's [`edgebus_proto::batch::validate`].
    pub(crate) fn check_shape(&self) -> Result<(), AppendError> {
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

/// The storage layer failed. A failed write transaction applied nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// redb (or the file under it) failed.
    #[error("storage: {0}")]
    Backend(String),
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
/// a failed `append` applies nothing, and dedup state commits together with
/// the batches it describes.
pub trait LogStore: Send + Sync + 'static {
    /// Creates a topic with all its partitions, empty.
    fn create_topic(&self, spec: &TopicSpec) -> Result<(), TopicError>;

    /// Deletes a topic, its records and its dedup state.
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
}
