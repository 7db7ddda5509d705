//! # edgebus-store
//!
//! Partition logs and broker metadata on disk. The seam between the broker
//! and storage is two traits: [`PartitionLog`] (batches written at offsets
//! the caller chose, truncation, the leader-epoch table, reads bounded by
//! the high watermark) and [`MetaStore`] (topics, groups, producer ids,
//! plugins, configuration, pipeline progress). [`LogStore`] is both, plus
//! the one write that must span them atomically (a pipeline step).
//! [`RedbStore`] is the real implementation (one redb file per node) and
//! [`MemStore`] an in-memory one with fault injection. Both pass the same
//! [`conformance`] suite.
//!
//! ```text
//!   partition engine (edgebus-core) decides offsets, epochs, dedup
//!        │ commands
//!   broker writer ──append_at(group)──▶ PartitionLog ──▶ redb write txn ──▶ fsync
//!   fetch / subscribe ──read(.., hw)──▶ PartitionLog ──▶ redb read txn (MVCC)
//! ```
//!
//! The store never picks an offset: [`PartitionLog::append_at`] refuses
//! anything but the log end. It is synchronous: redb is, and the broker
//! calls it from a dedicated writer thread and from blocking tasks.
//!
//! ## Layout
//!
//! - [`topic`]: topic validation and defaults.
//! - [`group`]: consumer-group name validation.
//! - `plugin`: the stored form of a registered plugin's description.
//! - [`redb_store`]: [`RedbStore`], its tables, and its reopen after IO
//!   errors.
//! - [`mem`]: [`MemStore`] with fail-after-N-writes.
//! - [`conformance`]: the suite every store must pass.
#![warn(missing_docs)]

use bytes::Bytes;
use edgebus_proto::batch::BatchHeader;
pub use edgebus_proto::frame::TopicSpec;

pub mod conformance;
pub mod group;
pub mod mem;
mod plugin;
pub mod redb_store;
pub mod topic;

pub use mem::MemStore;
pub use redb_store::RedbStore;

/// About how many bytes of records one step of deletion frees (a step of
/// [`MetaStore::drain_deleted`] or one retention pass): about a millisecond
/// of the writer's time, so appends to other partitions wait at most that
/// long behind it.
pub const DELETE_STEP_BYTES: u64 = 8 << 20;

/// One write to a partition log at an offset the caller chose (the
/// partition engine in `edgebus-core` decides offsets; the store only
/// refuses anything but the current log end).
#[derive(Debug, Clone)]
pub struct LogWrite {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// Where the batch goes: must equal the partition's log end.
    pub base_offset: u64,
    /// The leader epoch the batch is stamped with. The first batch of an
    /// epoch newer than every epoch in the partition's epoch table adds
    /// `epoch → base_offset` to it.
    pub leader_epoch: i32,
    /// The encoded batch, already validated by the caller with
    /// [`edgebus_proto::batch::validate`]; the store writes `base_offset`
    /// and `leader_epoch` into it in place. Empty when the write only
    /// stores producer state (an ingest chain dropped every record).
    pub batch: Bytes,
    /// Producer dedup state to store in the same transaction as the batch
    /// (invariant 4): `(producer id, state)`. The store keeps the state as
    /// opaque bytes; `edgebus-core` encodes and decodes it.
    pub producer: Option<(i64, Bytes)>,
}

impl LogWrite {
    /// Checks, cheaply, that the bytes are one whole batch holding records,
    /// so a store can trust its header to advance the log end and can
    /// stamp the offset and epoch in place. The full check (CRC, every
    /// record) is the caller's [`edgebus_proto::batch::validate`]. `None`
    /// for a write that stores producer state only.
    pub(crate) fn header(&self) -> Result<Option<BatchHeader>, WriteError> {
        if self.batch.is_empty() {
            return Ok(None);
        }
        let header =
            BatchHeader::parse(&self.batch).map_err(|e| WriteError::InvalidBatch(e.to_string()))?;
        if header.total_len() != self.batch.len() {
            return Err(WriteError::InvalidBatch(format!(
                "batch is {} bytes, its header says {}",
                self.batch.len(),
                header.total_len()
            )));
        }
        Ok(Some(header))
    }

    /// The log end after this write.
    pub(crate) fn end(&self, header: Option<&BatchHeader>) -> u64 {
        header.map_or(self.base_offset, |h| {
            self.base_offset + u64::from(h.record_count)
        })
    }
}

/// Refuses, for both stores alike, a write no log may hold: a batch reaching
/// past [`MAX_OFFSET`] (`write` starts at the log end, which is at most
/// that, so the end cannot overflow), or dedup state of a producer that is
/// not idempotent (a negative id).
pub(crate) fn check_write_bounds(
    write: &LogWrite,
    header: Option<&BatchHeader>,
) -> Result<(), WriteError> {
    if write.end(header) > MAX_OFFSET {
        return Err(WriteError::InvalidBatch(format!(
            "a batch at {} would reach past the largest offset, {MAX_OFFSET}",
            write.base_offset
        )));
    }
    match &write.producer {
        Some((id, _)) if *id < 0 => Err(WriteError::InvalidBatch(format!(
            "producer id {id} is no idempotent producer's"
        ))),
        _ => Ok(()),
    }
}

/// Checks `batch` as a replacement for the stored batch at `offset`, which
/// holds the offsets `offset..next` and was stamped `epoch` by the epoch
/// table (see [`PartitionLog::mend_batch`]).
pub(crate) fn check_mend(
    offset: u64,
    next: u64,
    epoch: Option<i32>,
    batch: &[u8],
) -> Result<(), WriteError> {
    let header = edgebus_proto::batch::verify_crc(batch)
        .map_err(|e| WriteError::InvalidBatch(format!("mending batch at {offset}: {e}")))?;
    if let Some(epoch) = epoch
        && header.partition_leader_epoch != epoch
    {
        return Err(WriteError::InvalidBatch(format!(
            "mending the batch at {offset} of epoch {epoch} with one of epoch {}",
            header.partition_leader_epoch
        )));
    }
    if header.base_offset != offset || header.next_offset() != next {
        return Err(WriteError::InvalidBatch(format!(
            "mending the batch holding offsets {offset}..{next} with one holding {}..{}",
            header.base_offset,
            header.next_offset()
        )));
    }
    if header.total_len() != batch.len() {
        return Err(WriteError::InvalidBatch(format!(
            "mending batch is {} bytes, its header says {}",
            batch.len(),
            header.total_len()
        )));
    }
    Ok(())
}

/// Why a group of log writes was refused. A refused group applied nothing:
/// every write of a group commits in one transaction or none does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
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
    /// A write's base offset is not the partition's log end: writing it
    /// would leave a gap or overwrite records (invariant 2).
    #[error("write to {topic}/{partition} at offset {base_offset}, but the log ends at {log_end}")]
    NotAtLogEnd {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: u32,
        /// Offset the write asked for.
        base_offset: u64,
        /// The partition's log end.
        log_end: u64,
    },
    /// The batch bytes are not a batch with records: storing it could
    /// break offset density.
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// A batch stamped with a leader epoch older than the partition's
    /// newest: a deposed leader is still writing.
    #[error("write to {topic}/{partition} in leader epoch {epoch}, but epoch {latest} has begun")]
    EpochBehind {
        /// Topic name.
        topic: String,
        /// Partition index.
        partition: u32,
        /// Epoch of the write.
        epoch: i32,
        /// Newest epoch in the partition's epoch table.
        latest: i32,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ReadError> for WriteError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::UnknownTopic(topic) => WriteError::UnknownTopic(topic),
            ReadError::UnknownPartition { topic, partition } => {
                WriteError::UnknownPartition { topic, partition }
            }
            ReadError::Store(e) => WriteError::Store(e),
            damaged @ ReadError::DamagedBatch { .. } => WriteError::Store(StoreError::Corrupt {
                table: "log".into(),
                detail: damaged.to_string(),
            }),
            too_large @ ReadError::OffsetTooLarge(_) => {
                WriteError::InvalidBatch(too_large.to_string())
            }
        }
    }
}

/// One entry of a partition's leader-epoch table: the first offset written
/// under `epoch`. Kafka's leader-epoch checkpoint, used to truncate a
/// diverged replica by epoch rather than by high watermark (KIP-101/279).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochStart {
    /// Leader epoch.
    pub epoch: i32,
    /// Offset of the first record written in that epoch.
    pub start_offset: u64,
}

/// The answer to Kafka's "end offset for epoch" question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEnd {
    /// The largest epoch in the table at or below the one asked for.
    pub epoch: i32,
    /// The offset after the last record of that epoch: the start of the
    /// next epoch in the table, or the log end for the latest epoch.
    pub end_offset: u64,
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

/// The largest offset a log can reach: Kafka's offsets are `i64`.
pub const MAX_OFFSET: u64 = i64::MAX as u64;

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
    /// A stored batch failed its CRC or does not sit where its key says:
    /// the bytes rotted on disk. It is never served; in a cluster the copy
    /// is rebuilt from the leader.
    #[error(
        "batch at offset {offset} of {topic:?} partition {partition} is damaged on disk: {detail}"
    )]
    DamagedBatch {
        /// Topic name.
        topic: String,
        /// Partition.
        partition: u32,
        /// The key the damaged batch is stored under (its base offset).
        offset: u64,
        /// What failed.
        detail: String,
    },
    /// An offset past Kafka's largest, [`MAX_OFFSET`], which no log reaches.
    #[error("offset {0} is past the largest a log can reach ({MAX_OFFSET})")]
    OffsetTooLarge(u64),
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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    /// An IO call failed because the disk (or the user's quota) is full.
    /// Handled like [`StoreError::Io`]; told apart so that clients can be
    /// told at once why nothing is stored.
    #[error("disk full: {0}")]
    DiskFull(String),
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
    /// The data was written in an on-disk format this release does not
    /// read. Nothing was read or changed.
    #[error(
        "the data directory holds storage format {found}, this release reads format {supported}: \
         {advice}"
    )]
    IncompatibleFormat {
        /// The format found.
        found: u64,
        /// The format this release reads and writes.
        supported: u64,
        /// What the operator can do.
        advice: &'static str,
    },
}

/// The offsets bounding a partition's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartitionOffsets {
    /// Oldest retained offset (equals `log_end` when the log is empty).
    pub log_start: u64,
    /// Offset the next appended record gets.
    pub log_end: u64,
}

impl PartitionOffsets {
    /// The offsets a reader bounded by `upper` (the high watermark) sees:
    /// the log seems to end there.
    pub fn bounded(self, upper: u64) -> PartitionOffsets {
        let log_end = self.log_end.min(upper);
        PartitionOffsets {
            log_start: self.log_start.min(log_end),
            log_end,
        }
    }
}

/// Batches read from a partition.
#[derive(Debug, Clone, Default)]
pub struct ReadBatches {
    /// Whole batches in offset order, base offsets filled in.
    pub batches: Vec<Bytes>,
    /// The partition's offsets as of the read transaction, bounded by the
    /// read's upper offset (see [`PartitionOffsets::bounded`]).
    pub offsets: PartitionOffsets,
}

/// A claim on a partition's records from `from` on, which retention keeps
/// up to `max_bytes` of partition size (see
/// [`PartitionLog::enforce_retention_holding`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionHold {
    /// Who holds (a mirror's name), for the holder to tell its holds apart.
    pub holder: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// The first record the holder still needs.
    pub from: u64,
    /// Partition bytes past which held batches are deleted anyway.
    pub max_bytes: u64,
    /// Out: held records deleted anyway.
    pub dropped_records: u64,
    /// Out: bytes of the batches that held them.
    pub dropped_bytes: u64,
}

impl RetentionHold {
    /// Whether retention may delete the oldest batch, `base..end` of
    /// `size` bytes, of a partition now `partition_bytes` large, under the
    /// holds on that partition; counts what it takes from each hold.
    pub fn allow(
        holds: &mut [RetentionHold],
        topic: &str,
        partition: u32,
        (base, end, size): (u64, u64, u64),
        partition_bytes: u64,
    ) -> bool {
        let mut mine = holds
            .iter_mut()
            .filter(|h| h.topic == topic && h.partition == partition)
            .peekable();
        if mine.peek().is_none() {
            return true;
        }
        let held: Vec<&mut RetentionHold> = mine.filter(|h| end > h.from).collect();
        if held.is_empty() {
            return true;
        }
        if held.iter().all(|h| partition_bytes <= h.max_bytes) {
            return false;
        }
        for h in held {
            h.dropped_records += end - base.max(h.from);
            h.dropped_bytes += size;
        }
        true
    }
}

/// What a retention pass deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionReport {
    /// Whole batches deleted.
    pub batches: u64,
    /// Bytes of those batches.
    pub bytes: u64,
    /// Whether the pass stopped at [`DELETE_STEP_BYTES`] with more due: the
    /// caller runs another pass.
    pub more: bool,
}

impl RetentionReport {
    /// Whether the pass has deleted its step's worth, marking it as having
    /// more due: called with a batch that retention would delete next.
    pub fn step_spent(&mut self) -> bool {
        if self.bytes >= DELETE_STEP_BYTES {
            self.more = true;
        }
        self.more
    }
}

/// The partition logs: the half of the storage seam that replication
/// drives.
///
/// Invariants every implementation keeps (and [`conformance`] checks):
/// offsets are dense and never reused, a write lands only at the log end, a
/// committed write survives reopen, a refused or failed write applies
/// nothing, and producer state commits together with the batches it
/// describes.
pub trait PartitionLog: Send + Sync + 'static {
    /// Writes a group of batches, from any topics and partitions, in one
    /// transaction (group commit), in slice order: each write's
    /// `base_offset` must be its partition's log end once the earlier
    /// writes of the group are applied. The transaction is fsync'd before
    /// returning when `durable` is true.
    ///
    /// All or nothing: any refused write refuses the group.
    fn append_at(&self, writes: &[LogWrite], durable: bool) -> Result<(), WriteError>;

    /// Removes every batch holding an offset at or after `offset`, durably,
    /// and every epoch-table entry starting at or after the new log end.
    /// Batches are whole, so the new log end is the base offset of the
    /// batch holding `offset` (or `offset` itself at a batch boundary); it
    /// is returned. Truncating at or past the log end changes nothing.
    ///
    /// Producer state is the caller's: the partition engine decides what
    /// dedup state survives a truncation, and `producers` replaces the
    /// stored state of each producer it names in the same transaction (a
    /// producer whose batches were cut), so a restart does not find the
    /// state of batches that are gone.
    fn truncate_from(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        producers: &[(i64, Bytes)],
    ) -> Result<u64, ReadError>;

    /// Replaces the stored batch at `offset` (one that fails its CRC) with
    /// `batch`, durably: another replica's copy of it, which must pass its
    /// CRC, hold exactly the stored batch's offsets, from `offset` up to
    /// the next stored batch (or the log end), and be stamped with the
    /// epoch the epoch table gives `offset` (if it has one, as every
    /// replicated partition's does). Nothing else changes: the
    /// epoch table, producer state and time index were written with the
    /// original and hold for its copy. A batch that does not fit is
    /// [`WriteError::InvalidBatch`], with nothing changed.
    fn mend_batch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        batch: &[u8],
    ) -> Result<(), WriteError>;

    /// Reads whole batches starting with the one holding `from`, stopping
    /// before `max_bytes` would be exceeded, but always returning at least
    /// one batch when any exists at or after `from`. Only batches that end
    /// at or below `upper` are returned: readers pass the high watermark,
    /// so they never see records that are not yet committed. A `from` below
    /// the log start reads from the log start.
    fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_bytes: usize,
        upper: u64,
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

    /// The partition's leader-epoch table, oldest epoch first.
    fn epochs(&self, topic: &str, partition: u32) -> Result<Vec<EpochStart>, ReadError>;

    /// Kafka's "end offset for epoch": for the largest epoch in the table
    /// at or below `epoch`, the offset after its last record. `None` when
    /// the table holds no such epoch.
    fn end_offset_for_epoch(
        &self,
        topic: &str,
        partition: u32,
        epoch: i32,
    ) -> Result<Option<EpochEnd>, ReadError>;

    /// Every producer's stored dedup state on the partition, by producer
    /// id: what the partition engine starts from after a restart.
    fn producer_states(&self, topic: &str, partition: u32) -> Result<Vec<(i64, Bytes)>, ReadError>;

    /// Deletes whole batches that retention allows deleting as of `now_ms`:
    /// batches whose max timestamp is older than `retention.ms`, and the
    /// oldest batches while a partition exceeds `retention.bytes`. Never
    /// deletes a batch that neither rule covers. A pass deletes about
    /// [`DELETE_STEP_BYTES`] at most and says whether more is due.
    fn enforce_retention(&self, now_ms: i64) -> Result<RetentionReport, StoreError> {
        self.enforce_retention_holding(now_ms, &mut [])
    }

    /// [`PartitionLog::enforce_retention`], except that a batch holding
    /// records at or after a hold's `from` (not yet delivered by a mirror)
    /// is deleted only while the partition holds more than the hold's
    /// `max_bytes`. Each hold is told the records and bytes of its own
    /// that were deleted all the same.
    fn enforce_retention_holding(
        &self,
        now_ms: i64,
        holds: &mut [RetentionHold],
    ) -> Result<RetentionReport, StoreError>;

    /// Moves the end of a partition's log forward to `offset` without
    /// storing anything: the offsets between will never hold records here.
    /// A mirror's destination does this when its source deleted records
    /// before delivering them, so later records keep their offsets.
    /// Returns the new log end; an offset at or below the log end changes
    /// nothing.
    fn skip_to(&self, topic: &str, partition: u32, offset: u64) -> Result<u64, ReadError>;

    /// Bytes of the partition's stored batches, as stored: what
    /// `retention.bytes` is measured against.
    fn partition_bytes(&self, topic: &str, partition: u32) -> Result<u64, ReadError>;
}

/// Everything that is not a partition log: topics, consumer-group offsets,
/// producer ids, the plugin registry, saved configuration and pipeline
/// progress.
pub trait MetaStore: Send + Sync + 'static {
    /// Creates a topic with all its partitions, empty.
    fn create_topic(&self, spec: &TopicSpec) -> Result<(), TopicError>;

    /// Deletes a topic, its records, its producer state, its epoch table
    /// and every group's committed offsets for it, in one transaction: a
    /// topic recreated under the same name starts at offset 0, and an old
    /// committed offset must not point a group into the new log. The topic
    /// is gone at once; a store may free a large log's space later, in
    /// steps of [`MetaStore::drain_deleted`] (a topic created under the
    /// name meanwhile frees the rest first).
    fn delete_topic(&self, name: &str) -> Result<(), TopicError>;

    /// Frees about `budget` bytes of deleted topics' records that
    /// [`MetaStore::delete_topic`] left to free later. Returns whether more
    /// is left. The step need not be durable: one lost to a crash is done
    /// again.
    fn drain_deleted(&self, budget: u64) -> Result<bool, StoreError>;

    /// All topics, sorted by name.
    fn topics(&self) -> Result<Vec<TopicSpec>, StoreError>;

    /// One topic's configuration.
    fn topic(&self, name: &str) -> Result<Option<TopicSpec>, StoreError>;

    /// Allocates a new producer id, durably, so no id is handed out twice.
    fn allocate_producer_id(&self) -> Result<i64, StoreError>;

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

    /// A pipeline's next source offset per source partition, sorted.
    fn pipeline_positions(&self, pipeline: &str) -> Result<Vec<(u32, u64)>, StoreError>;

    /// A pipeline's stored plugin state under `key`.
    fn pipeline_state(&self, pipeline: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Deletes a pipeline's positions and state (or any other state owner's
    /// state; see [`MetaStore::put_plugin_state`]).
    fn delete_pipeline_data(&self, pipeline: &str) -> Result<(), StoreError>;

    /// Deletes the plugin state of every owner whose name starts with
    /// `prefix` (the read-path states of a deleted topic), durably.
    fn delete_plugin_state_owners(&self, prefix: &str) -> Result<(), StoreError>;

    /// Up to `limit` entries of an owner's plugin state (a pipeline's, or
    /// another owner's, see [`MetaStore::put_plugin_state`]) whose key
    /// starts with `prefix` and sorts after `after` (from the first when
    /// `None`), in key order.
    fn plugin_state_list(
        &self,
        owner: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<StateEntries, StoreError>;

    /// Applies plugin state changes in order (`Some` sets, `None`
    /// deletes), durably, for an owner that is not a pipeline (a pipeline
    /// commits its state with its step). Owners share the pipeline state
    /// table: the broker names them so they cannot meet a pipeline name
    /// (`ingest:<topic>` for a topic's ingest chain; names never hold `:`).
    fn put_plugin_state(
        &self,
        owner: &str,
        changes: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> Result<(), StoreError>;

    /// Replaces a topic's settings with `spec` (validated as for
    /// [`MetaStore::create_topic`]), durably. Partitions can be added, which
    /// start empty at offset 0, but never removed: a smaller count is
    /// refused as invalid and changes nothing.
    fn alter_topic(&self, spec: &TopicSpec) -> Result<(), TopicError>;
}

/// The whole storage seam of a node: its partition logs and its metadata,
/// in one file, so the writes that must span both commit atomically.
pub trait LogStore: PartitionLog + MetaStore {
    /// Commits one pipeline step in ONE durable transaction: the output
    /// writes (and dead letters), the plugin state changes, and the source
    /// position. All or nothing: if any write is refused, nothing is
    /// applied. This is what makes pipelines exactly-once: after a crash,
    /// the stored position, state and outputs always agree.
    fn commit_pipeline(&self, commit: &PipelineCommit) -> Result<(), WriteError>;

    /// [`PartitionLog::append_at`] with plugin state changes (as
    /// [`MetaStore::put_plugin_state`] applies them) in the same
    /// transaction, after the writes: an ingest chain's state is stored
    /// with the records it was computed from, so after a crash the two
    /// agree. All or nothing, like the writes alone.
    fn append_with_state(
        &self,
        writes: &[LogWrite],
        state: &[StateWrite],
        durable: bool,
    ) -> Result<(), WriteError>;
}

/// Plugin state changes of one owner, in order: `Some` sets, `None`
/// deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateWrite {
    /// The owner (see [`MetaStore::put_plugin_state`]).
    pub owner: String,
    /// The changes.
    pub changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// Plugin state entries, `(key, value)`, in key order.
pub type StateEntries = Vec<(Vec<u8>, Vec<u8>)>;

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
    /// A persistent MQTT session, keyed by client id.
    MqttSession,
    /// An edge's mirrors: definition and progress, by mirror name.
    Mirror,
    /// A hub's mirror destination topics: the mirror each is bound to, by
    /// topic name. Deleted with the topic.
    MirrorDestination,
}

impl ConfigKind {
    /// The kind's number in stored keys. Stored data outlives code, so a
    /// number is never reassigned, even when its kind is retired.
    pub(crate) fn tag(self) -> u8 {
        match self {
            ConfigKind::Ingest => 1,
            ConfigKind::Pipeline => 2,
            ConfigKind::MqttSession => 3,
            ConfigKind::Mirror => 4,
            ConfigKind::MirrorDestination => 5,
        }
    }
}

/// One exactly-once pipeline step.
#[derive(Debug, Clone)]
pub struct PipelineCommit {
    /// Pipeline name.
    pub pipeline: String,
    /// Output batches (and dead letters) at the offsets their partition
    /// engines chose.
    pub writes: Vec<LogWrite>,
    /// Plugin state changes in order: `Some` sets, `None` deletes.
    pub state: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// The source partition this step read.
    pub source_partition: u32,
    /// The next source offset to read after this step.
    pub source_next_offset: u64,
}

/// Kafka's "end offset for epoch" over an epoch table (oldest first) of a
/// log ending at `log_end`: shared by both stores so they answer alike.
pub(crate) fn end_offset_for_epoch(
    epochs: &[EpochStart],
    log_end: u64,
    epoch: i32,
) -> Option<EpochEnd> {
    let found = epochs.iter().rposition(|e| e.epoch <= epoch)?;
    let end_offset = epochs
        .get(found + 1)
        .map_or(log_end, |next| next.start_offset);
    Some(EpochEnd {
        epoch: epochs[found].epoch,
        end_offset,
    })
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
