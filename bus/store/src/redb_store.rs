//! [`RedbStore`]: partition logs in one redb file per node.
//!
//! # Tables
//!
//! ```text
//! topics                 &str            → topic settings (topic::encode_spec)
//! partitions             (&str, u32)     → (log_start u64, log_end u64, bytes u64)
//! producers              (i64, &str, u32)→ ProducerState::encode
//! node                   &str            → u64   ("next_producer_id")
//! log/{topic}/{p}        u64 base_offset → whole batch, base offset written in
//! time/{topic}/{p}       i64 max_ts_ms   → u64 base offset
//! ```
//!
//! The `partitions` row is the source of truth for a partition's offsets:
//! it keeps `log_end` when retention has deleted every batch, so offsets are
//! never reused, and it keeps the partition's stored bytes so size
//! retention knows when to act without scanning the log.
//!
//! The time index follows Kafka's: an entry is added only when a batch's
//! max timestamp exceeds every earlier one in the partition, so keys and
//! values both increase and a lookup is one range probe.
//!
//! Topic names are `[A-Za-z0-9._-]`, so the `/` in table names cannot be
//! forged by a topic name.
//!
//! Every write is one redb write transaction: a group append, a retention
//! pass, a topic creation or deletion all apply completely or not at all,
//! and dedup state commits with the batches it describes (invariant 4).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::Path;

use bytes::Bytes;
use edgebus_proto::batch::{self, BatchHeader};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, StorageBackend, Table, TableDefinition,
    WriteTransaction,
};

use crate::dedup::{self, Decision, ProducerState};
use crate::topic;
use crate::{
    Append, AppendError, AppendOutcome, LogStore, PartitionOffsets, ReadBatches, ReadError,
    RetentionReport, StoreError, TopicError, TopicSpec,
};

const TOPICS: TableDefinition<&str, &[u8]> = TableDefinition::new("topics");
const PARTITIONS: TableDefinition<(&str, u32), (u64, u64, u64)> =
    TableDefinition::new("partitions");
const PRODUCERS: TableDefinition<(i64, &str, u32), &[u8]> = TableDefinition::new("producers");
const NODE: TableDefinition<&str, u64> = TableDefinition::new("node");
const NEXT_PRODUCER_ID: &str = "next_producer_id";

/// The redb-backed [`LogStore`]: one file per node, one writer.
///
/// Callers serialize writes themselves (the broker has a single writer
/// task); redb would block a second concurrent writer until the first
/// commits. Reads run in MVCC read transactions and never block the writer.
#[derive(Debug)]
pub struct RedbStore {
    db: Database,
}

/// Names of one partition's two tables.
struct PartitionTables {
    log: String,
    time: String,
}

impl PartitionTables {
    fn new(topic: &str, partition: u32) -> Self {
        PartitionTables {
            log: format!("log/{topic}/{partition}"),
            time: format!("time/{topic}/{partition}"),
        }
    }

    fn log(&self) -> TableDefinition<'_, u64, &'static [u8]> {
        TableDefinition::new(&self.log)
    }

    fn time(&self) -> TableDefinition<'_, i64, u64> {
        TableDefinition::new(&self.time)
    }
}

/// A decoded `partitions` row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct PartitionRow {
    log_start: u64,
    log_end: u64,
    bytes: u64,
}

impl PartitionRow {
    fn from_value((log_start, log_end, bytes): (u64, u64, u64)) -> Self {
        PartitionRow {
            log_start,
            log_end,
            bytes,
        }
    }

    fn value(self) -> (u64, u64, u64) {
        (self.log_start, self.log_end, self.bytes)
    }

    fn offsets(self) -> PartitionOffsets {
        PartitionOffsets {
            log_start: self.log_start,
            log_end: self.log_end,
        }
    }
}

/// One producer's dedup state as loaded in a transaction, and whether this
/// transaction changed it.
struct ProducerSlot {
    state: Option<ProducerState>,
    dirty: bool,
}

macro_rules! backend_error {
    ($($error:ty),* $(,)?) => {$(
        impl From<$error> for StoreError {
            fn from(e: $error) -> Self {
                StoreError::Backend(e.to_string())
            }
        }
    )*};
}

backend_error!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
);

/// Converts a redb result for functions whose error type wraps
/// [`StoreError`], where `?` alone would need two conversions.
trait OrBackend<T> {
    fn or_backend(self) -> Result<T, StoreError>;
}

impl<T, E: Into<StoreError>> OrBackend<T> for Result<T, E> {
    fn or_backend(self) -> Result<T, StoreError> {
        self.map_err(Into::into)
    }
}

fn corrupt(table: &str, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        table: table.to_owned(),
        detail: detail.into(),
    }
}

/// Parses the header of a stored batch, checking it sits at its key.
fn stored_header(table: &str, base_offset: u64, bytes: &[u8]) -> Result<BatchHeader, StoreError> {
    let header = BatchHeader::parse(bytes)
        .map_err(|e| corrupt(table, format!("batch at {base_offset}: {e}")))?;
    check_position(table, base_offset, &header)?;
    Ok(header)
}

fn check_position(table: &str, base_offset: u64, header: &BatchHeader) -> Result<(), StoreError> {
    if header.base_offset != base_offset || header.record_count == 0 {
        return Err(corrupt(
            table,
            format!(
                "batch keyed {base_offset} says base offset {} with {} records",
                header.base_offset, header.record_count
            ),
        ));
    }
    Ok(())
}

impl RedbStore {
    /// Opens the store in the redb file at `path`, creating it if missing.
    ///
    /// After a crash redb repairs the file during this call (it walks the
    /// database to rebuild its allocator state), so recovery is opening;
    /// only transactions whose commit returned are found.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::init(Database::create(path)?)
    }

    /// Opens the store on a caller-supplied redb backend: a fault-injecting
    /// one in crash tests, or redb's in-memory backend.
    pub fn open_with_backend(backend: impl StorageBackend) -> Result<Self, StoreError> {
        Self::init(Database::builder().create_with_backend(backend)?)
    }

    /// Creates the fixed tables, so read transactions can always open them.
    fn init(db: Database) -> Result<Self, StoreError> {
        let txn = db.begin_write()?;
        txn.open_table(TOPICS)?;
        txn.open_table(PARTITIONS)?;
        txn.open_table(PRODUCERS)?;
        txn.open_table(NODE)?;
        txn.commit()?;
        Ok(RedbStore { db })
    }

    /// Creates the topic in `txn`; `false` if it already exists.
    fn create_in(txn: &WriteTransaction, spec: &TopicSpec) -> Result<bool, StoreError> {
        let mut topics = txn.open_table(TOPICS)?;
        if topics.get(spec.name.as_str())?.is_some() {
            return Ok(false);
        }
        topics.insert(spec.name.as_str(), topic::encode_spec(spec).as_slice())?;
        let mut partitions = txn.open_table(PARTITIONS)?;
        for partition in 0..spec.partitions {
            partitions.insert(
                (spec.name.as_str(), partition),
                PartitionRow::default().value(),
            )?;
            let tables = PartitionTables::new(&spec.name, partition);
            txn.open_table(tables.log())?;
            txn.open_table(tables.time())?;
        }
        Ok(true)
    }

    /// Deletes the topic in `txn`; `false` if there is none.
    fn delete_in(txn: &WriteTransaction, name: &str) -> Result<bool, StoreError> {
        let mut topics = txn.open_table(TOPICS)?;
        let Some(encoded) = topics.remove(name)? else {
            return Ok(false);
        };
        let spec = topic::decode_spec(name, encoded.value())?;
        drop(encoded);
        let mut partitions = txn.open_table(PARTITIONS)?;
        for partition in 0..spec.partitions {
            partitions.remove((name, partition))?;
            let tables = PartitionTables::new(name, partition);
            txn.delete_table(tables.log())?;
            txn.delete_table(tables.time())?;
        }
        txn.open_table(PRODUCERS)?
            .retain(|(_, topic, _), _| topic != name)?;
        Ok(true)
    }

    /// Appends one partition's share of a group, in slice order, pushing
    /// `(index, result)` for each.
    fn append_partition<'a>(
        txn: &WriteTransaction,
        producers: &mut Table<(i64, &str, u32), &[u8]>,
        row: &mut PartitionRow,
        (topic, partition): (&str, u32),
        members: impl Iterator<Item = (usize, &'a Append)>,
        results: &mut Vec<(usize, Result<AppendOutcome, AppendError>)>,
    ) -> Result<(), StoreError> {
        let tables = PartitionTables::new(topic, partition);
        let mut log = txn.open_table(tables.log())?;
        let mut time = txn.open_table(tables.time())?;
        let mut running_max_ms = time.last()?.map(|(ts, _)| ts.value());
        let mut states: HashMap<i64, ProducerSlot> = HashMap::new();
        for (index, append) in members {
            let header = &append.header;
            let stamp = header.producer;
            let slot = if stamp.is_idempotent() {
                Some(match states.entry(stamp.producer_id) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(e) => {
                        let state = producers
                            .get((stamp.producer_id, topic, partition))?
                            .map(|v| ProducerState::decode(v.value()))
                            .transpose()?;
                        e.insert(ProducerSlot {
                            state,
                            dirty: false,
                        })
                    }
                })
            } else {
                None
            };
            let state = slot.as_ref().and_then(|s| s.state.as_ref());
            let outcome = match dedup::check(state, stamp, header.record_count) {
                Err(e) => Err(e),
                Ok(Decision::Duplicate { base_offset }) => {
                    Ok(AppendOutcome::Duplicate { base_offset })
                }
                Ok(Decision::Append) => {
                    let base_offset = row.log_end;
                    {
                        let mut stored = log.insert_reserve(base_offset, append.batch.len())?;
                        let stored = stored.as_mut();
                        stored.copy_from_slice(&append.batch);
                        batch::set_base_offset(stored, base_offset);
                    }
                    row.log_end += u64::from(header.record_count);
                    row.bytes += append.batch.len() as u64;
                    if running_max_ms.is_none_or(|max| header.max_timestamp_ms > max) {
                        time.insert(header.max_timestamp_ms, base_offset)?;
                        running_max_ms = Some(header.max_timestamp_ms);
                    }
                    if let Some(slot) = slot {
                        slot.state = Some(dedup::record(
                            slot.state.take(),
                            stamp,
                            header.record_count,
                            base_offset,
                        ));
                        slot.dirty = true;
                    }
                    Ok(AppendOutcome::Appended { base_offset })
                }
            };
            results.push((index, outcome));
        }
        for (producer_id, slot) in states {
            if let (true, Some(state)) = (slot.dirty, slot.state) {
                producers.insert((producer_id, topic, partition), state.encode().as_slice())?;
            }
        }
        Ok(())
    }

    /// Applies retention to one partition; returns the updated row.
    fn retain_partition(
        txn: &WriteTransaction,
        spec: &TopicSpec,
        partition: u32,
        mut row: PartitionRow,
        now_ms: i64,
        report: &mut RetentionReport,
    ) -> Result<PartitionRow, StoreError> {
        let tables = PartitionTables::new(&spec.name, partition);
        let mut log = txn.open_table(tables.log())?;
        let oldest = |log: &Table<u64, &[u8]>| -> Result<Option<(u64, i64, u64)>, StoreError> {
            let Some((key, value)) = log.first()? else {
                return Ok(None);
            };
            let header = stored_header(&tables.log, key.value(), value.value())?;
            Ok(Some((
                key.value(),
                header.max_timestamp_ms,
                value.value().len() as u64,
            )))
        };
        let before = report.batches;
        if let Some(cutoff_ms) = topic::retention_cutoff_ms(spec, now_ms) {
            while let Some((base, max_ts, size)) = oldest(&log)? {
                if max_ts >= cutoff_ms {
                    break;
                }
                log.remove(base)?;
                row.bytes = row.bytes.saturating_sub(size);
                report.batches += 1;
                report.bytes += size;
            }
        }
        while let Some((base, _, size)) = oldest(&log)? {
            if !topic::oldest_over_size(spec, row.bytes, size) {
                break;
            }
            log.remove(base)?;
            row.bytes = row.bytes.saturating_sub(size);
            report.batches += 1;
            report.bytes += size;
        }
        if report.batches == before {
            return Ok(row);
        }
        let first = log.first()?.map(|(key, _)| key.value());
        row.log_start = first.unwrap_or(row.log_end);
        // Drop index entries below the new log start, but keep the largest
        // dropped timestamp pointing at the log start: remaining batches may
        // hold records up to it, and later appends compare against it.
        let mut time = txn.open_table(tables.time())?;
        let mut dropped = Vec::new();
        for entry in time.iter()? {
            let (ts, base) = entry?;
            if base.value() >= row.log_start {
                break;
            }
            dropped.push(ts.value());
        }
        for ts in &dropped {
            time.remove(ts)?;
        }
        if let (Some(ts), Some(_)) = (dropped.last(), first) {
            time.insert(ts, row.log_start)?;
        }
        Ok(row)
    }

    /// Reads the `partitions` row, telling an unknown topic from an unknown
    /// partition.
    fn partition_row(
        txn: &redb::ReadTransaction,
        topic: &str,
        partition: u32,
    ) -> Result<PartitionRow, ReadError> {
        let partitions = txn.open_table(PARTITIONS).or_backend()?;
        if let Some(row) = partitions.get((topic, partition)).or_backend()? {
            return Ok(PartitionRow::from_value(row.value()));
        }
        let topics = txn.open_table(TOPICS).or_backend()?;
        if topics.get(topic).or_backend()?.is_some() {
            Err(ReadError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
            })
        } else {
            Err(ReadError::UnknownTopic(topic.to_owned()))
        }
    }
}

impl LogStore for RedbStore {
    fn create_topic(&self, spec: &TopicSpec) -> Result<(), TopicError> {
        topic::validate(spec)?;
        let txn = self.db.begin_write().or_backend()?;
        if !Self::create_in(&txn, spec)? {
            return Err(TopicError::Exists(spec.name.clone()));
        }
        txn.commit().or_backend()?;
        Ok(())
    }

    fn delete_topic(&self, name: &str) -> Result<(), TopicError> {
        let txn = self.db.begin_write().or_backend()?;
        if !Self::delete_in(&txn, name)? {
            return Err(TopicError::NotFound(name.to_owned()));
        }
        txn.commit().or_backend()?;
        Ok(())
    }

    fn topics(&self) -> Result<Vec<TopicSpec>, StoreError> {
        let txn = self.db.begin_read()?;
        let topics = txn.open_table(TOPICS)?;
        topics
            .iter()?
            .map(|entry| {
                let (name, spec) = entry?;
                topic::decode_spec(name.value(), spec.value())
            })
            .collect()
    }

    fn topic(&self, name: &str) -> Result<Option<TopicSpec>, StoreError> {
        let txn = self.db.begin_read()?;
        let topics = txn.open_table(TOPICS)?;
        topics
            .get(name)?
            .map(|spec| topic::decode_spec(name, spec.value()))
            .transpose()
    }

    fn append(
        &self,
        appends: &[Append],
        durable: bool,
    ) -> Result<Vec<Result<AppendOutcome, AppendError>>, StoreError> {
        let mut results = Vec::with_capacity(appends.len());
        // Group by partition, keeping slice order within each, so each
        // partition's tables are opened once per group commit.
        let mut groups: Vec<((&str, u32), Vec<usize>)> = Vec::new();
        let mut group_of: HashMap<(&str, u32), usize> = HashMap::new();
        for (index, append) in appends.iter().enumerate() {
            if let Err(e) = append.check_shape() {
                results.push((index, Err(e)));
                continue;
            }
            let key = (append.topic.as_str(), append.partition);
            let group = *group_of.entry(key).or_insert_with(|| {
                groups.push((key, Vec::new()));
                groups.len() - 1
            });
            groups[group].1.push(index);
        }

        let mut txn = self.db.begin_write()?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        {
            let topics = txn.open_table(TOPICS)?;
            let mut partitions = txn.open_table(PARTITIONS)?;
            let mut producers = txn.open_table(PRODUCERS)?;
            for ((topic, partition), members) in groups {
                let row = partitions.get((topic, partition))?.map(|r| r.value());
                let Some(row) = row else {
                    let error = if topics.get(topic)?.is_some() {
                        AppendError::UnknownPartition {
                            topic: topic.to_owned(),
                            partition,
                        }
                    } else {
                        AppendError::UnknownTopic(topic.to_owned())
                    };
                    results.extend(members.into_iter().map(|i| (i, Err(error.clone()))));
                    continue;
                };
                let mut row = PartitionRow::from_value(row);
                Self::append_partition(
                    &txn,
                    &mut producers,
                    &mut row,
                    (topic, partition),
                    members.into_iter().map(|i| (i, &appends[i])),
                    &mut results,
                )?;
                partitions.insert((topic, partition), row.value())?;
            }
        }
        txn.commit()?;
        results.sort_unstable_by_key(|(index, _)| *index);
        Ok(results.into_iter().map(|(_, result)| result).collect())
    }

    fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_bytes: usize,
    ) -> Result<ReadBatches, ReadError> {
        let txn = self.db.begin_read().or_backend()?;
        let row = Self::partition_row(&txn, topic, partition)?;
        let offsets = row.offsets();
        let from = from.max(row.log_start);
        let mut batches = Vec::new();
        if from >= row.log_end {
            return Ok(ReadBatches { batches, offsets });
        }
        let tables = PartitionTables::new(topic, partition);
        let log = txn.open_table(tables.log()).or_backend()?;
        let holding = match log.range(..=from).or_backend()?.next_back() {
            Some(entry) => {
                let (key, value) = entry.or_backend()?;
                let header = stored_header(&tables.log, key.value(), value.value())?;
                (header.next_offset() > from).then_some(key.value())
            }
            None => None,
        };
        let mut total = 0usize;
        for entry in log.range(holding.unwrap_or(from)..).or_backend()? {
            let (key, value) = entry.or_backend()?;
            let bytes = value.value();
            if !batches.is_empty() && total + bytes.len() > max_bytes {
                break;
            }
            // Invariant 3: a batch damaged on disk is reported, never served.
            let header = batch::verify_crc(bytes)
                .map_err(|e| corrupt(&tables.log, format!("batch at {}: {e}", key.value())))?;
            check_position(&tables.log, key.value(), &header)?;
            total += bytes.len();
            batches.push(Bytes::copy_from_slice(bytes));
        }
        Ok(ReadBatches { batches, offsets })
    }

    fn offsets(&self, topic: &str, partition: u32) -> Result<PartitionOffsets, ReadError> {
        let txn = self.db.begin_read().or_backend()?;
        Ok(Self::partition_row(&txn, topic, partition)?.offsets())
    }

    fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<u64, ReadError> {
        let txn = self.db.begin_read().or_backend()?;
        let row = Self::partition_row(&txn, topic, partition)?;
        let tables = PartitionTables::new(topic, partition);
        let time = txn.open_table(tables.time()).or_backend()?;
        let found = match time.range(timestamp_ms..).or_backend()?.next() {
            Some(entry) => Some(entry.or_backend()?.1.value()),
            None => None,
        };
        Ok(found.map_or(row.log_end, |base| base.max(row.log_start)))
    }

    fn allocate_producer_id(&self) -> Result<i64, StoreError> {
        let txn = self.db.begin_write()?;
        let id = {
            let mut node = txn.open_table(NODE)?;
            let id = node.get(NEXT_PRODUCER_ID)?.map_or(0, |v| v.value());
            node.insert(NEXT_PRODUCER_ID, id + 1)?;
            id
        };
        txn.commit()?;
        i64::try_from(id).map_err(|_| corrupt("node", format!("next_producer_id {id}")))
    }

    fn enforce_retention(&self, now_ms: i64) -> Result<RetentionReport, StoreError> {
        let txn = self.db.begin_write()?;
        let mut report = RetentionReport::default();
        {
            let specs: Vec<TopicSpec> = txn
                .open_table(TOPICS)?
                .iter()?
                .map(|entry| {
                    let (name, spec) = entry?;
                    topic::decode_spec(name.value(), spec.value())
                })
                .filter(|spec| {
                    spec.as_ref().map_or(true, |s| {
                        s.retention_ms != topic::UNLIMITED || s.retention_bytes != topic::UNLIMITED
                    })
                })
                .collect::<Result<_, _>>()?;
            let mut partitions = txn.open_table(PARTITIONS)?;
            for spec in &specs {
                for partition in 0..spec.partitions {
                    let key = (spec.name.as_str(), partition);
                    let row = partitions.get(key)?.map(|r| r.value()).ok_or_else(|| {
                        corrupt(
                            "partitions",
                            format!("no row for {}/{partition}", spec.name),
                        )
                    })?;
                    let row = PartitionRow::from_value(row);
                    // Size retention needs more than the limit stored to act.
                    let over_size =
                        u64::try_from(spec.retention_bytes).is_ok_and(|limit| row.bytes > limit);
                    if row.log_start == row.log_end
                        || (spec.retention_ms == topic::UNLIMITED && !over_size)
                    {
                        continue;
                    }
                    let retained =
                        Self::retain_partition(&txn, spec, partition, row, now_ms, &mut report)?;
                    if retained != row {
                        partitions.insert(key, retained.value())?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(report)
    }
}
