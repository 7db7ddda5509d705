//! [`MemStore`]: the whole store in memory, behind one mutex, with
//! fail-after-N-writes fault injection.
//!
//! It has the same semantics as [`crate::RedbStore`] (the
//! [`crate::conformance`] suite holds both to them) and exists so the broker
//! and replication cores can be tested fast, and so crash handling above the
//! store can be tested by making writes fail on cue.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::{Bytes, BytesMut};
use edgebus_proto::batch::{BatchHeader, set_base_offset, set_partition_leader_epoch};

use crate::{
    CommitError, CommittedOffset, ConfigKind, EpochEnd, EpochStart, LogStore, LogWrite, MetaStore,
    OffsetCommit, PartitionLog, PartitionOffsets, PipelineCommit, PluginInfo, ReadBatches,
    ReadError, RetentionHold, RetentionReport, StateWrite, StoreError, TopicError, TopicSpec,
    WriteError,
};
use crate::{group, plugin, topic};

/// An in-memory [`LogStore`] with fault injection.
///
/// Every write operation (`create_topic`, `alter_topic`, `delete_topic`, `append_at`,
/// `truncate_from`, `enforce_retention`, `allocate_producer_id`, `commit_offsets`,
/// `delete_group`, `put_plugin`, `remove_plugin`, `put_config`,
/// `commit_pipeline`, `delete_pipeline_data`) either applies completely or
/// not at all, under one lock, so there is never uncommitted state: what a
/// reader sees is what a "restart" ([`MemStore::reopen`]) keeps. Each counts
/// as one write for [`MemStore::fail_after_writes`].
#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: State,
    faults: Faults,
}

/// Committed state: everything that survives [`MemStore::reopen`].
#[derive(Debug, Clone, Default)]
struct State {
    topics: BTreeMap<String, TopicSpec>,
    partitions: BTreeMap<(String, u32), Partition>,
    /// (producer id, topic, partition) → opaque dedup state.
    producers: BTreeMap<(i64, String, u32), Bytes>,
    next_producer_id: i64,
    /// (group, topic, partition) → committed offset, ordered as
    /// `committed_offsets` and `groups` answer.
    group_offsets: BTreeMap<(String, String, u32), u64>,
    /// name → description and component bytes.
    plugins: BTreeMap<String, (PluginInfo, Bytes)>,
    /// ([`ConfigKind::tag`], key) → blob, ordered as `configs` answers.
    configs: BTreeMap<(u8, String), Vec<u8>>,
    /// (pipeline, key) → plugin state.
    pipeline_state: BTreeMap<(String, Vec<u8>), Vec<u8>>,
    /// (pipeline, source partition) → next source offset.
    pipeline_positions: BTreeMap<(String, u32), u64>,
}

#[derive(Debug, Clone, Default)]
struct Partition {
    offsets: PartitionOffsets,
    /// Sum of the stored batch sizes, for size retention.
    bytes: u64,
    /// base offset → batch, base offset written in.
    log: BTreeMap<u64, StoredBatch>,
    /// Running max timestamp → base offset of the batch that raised it.
    time: BTreeMap<i64, u64>,
    /// Leader epoch → offset of its first record.
    epochs: BTreeMap<i32, u64>,
}

#[derive(Debug, Clone)]
struct StoredBatch {
    bytes: Bytes,
    record_count: u32,
    max_timestamp_ms: i64,
}

/// The fail-after-N countdown.
#[derive(Debug, Default)]
struct Faults {
    /// Writes still allowed; `None` when no fault is armed.
    remaining: Option<u64>,
    /// The N the countdown was armed with, reported in the error.
    armed_with: u64,
}

impl MemStore {
    /// An empty store with no faults armed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets `n` more write operations succeed, then makes every write
    /// return [`StoreError::Injected`] without applying anything, until
    /// [`MemStore::clear_faults`]. Reads keep working, as they would on a
    /// disk that refuses writes.
    pub fn fail_after_writes(&self, n: u64) {
        let mut inner = self.lock();
        inner.faults = Faults {
            remaining: Some(n),
            armed_with: n,
        };
    }

    /// Disarms fault injection.
    pub fn clear_faults(&self) {
        self.lock().faults = Faults::default();
    }

    /// A store holding exactly this store's committed state, with no faults
    /// armed: what a process restart would find. Since every write applies
    /// atomically under the lock, the committed state is the whole state,
    /// so this is a copy; it exists so tests written against a real store's
    /// crash-and-reopen cycle run unchanged here.
    pub fn reopen(&self) -> MemStore {
        MemStore {
            inner: Mutex::new(Inner {
                state: self.lock().state.clone(),
                faults: Faults::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Writes validate before they mutate and nothing in them panics on
        // input, so a poisoned lock still guards consistent state.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    /// Counts one write against the armed fault, or refuses it.
    fn begin_write(&mut self) -> Result<&mut State, StoreError> {
        match &mut self.faults.remaining {
            Some(0) => Err(StoreError::Injected(self.faults.armed_with)),
            Some(left) => {
                *left -= 1;
                Ok(&mut self.state)
            }
            None => Ok(&mut self.state),
        }
    }
}

impl State {
    /// Applies `owner`'s plugin state changes in order.
    fn put_state(&mut self, owner: &str, changes: &[(Vec<u8>, Option<Vec<u8>>)]) {
        for (key, value) in changes {
            let key = (owner.to_owned(), key.clone());
            match value {
                Some(value) => self.pipeline_state.insert(key, value.clone()),
                None => self.pipeline_state.remove(&key),
            };
        }
    }

    /// The committed offsets of one group, in key order.
    fn offsets_of_group<'a>(
        &'a self,
        group: &'a str,
    ) -> impl Iterator<Item = (&'a (String, String, u32), &'a u64)> + 'a {
        self.group_offsets
            .range((group.to_owned(), String::new(), 0)..)
            .take_while(move |((g, _, _), _)| g == group)
    }

    /// Refuses a commit naming a topic or partition that does not exist.
    fn check_commit_target(&self, commit: &OffsetCommit) -> Result<(), CommitError> {
        if self
            .partitions
            .contains_key(&(commit.topic.clone(), commit.partition))
        {
            Ok(())
        } else if self.topics.contains_key(&commit.topic) {
            Err(CommitError::UnknownPartition {
                topic: commit.topic.clone(),
                partition: commit.partition,
            })
        } else {
            Err(CommitError::UnknownTopic(commit.topic.clone()))
        }
    }

    fn partition(&self, topic: &str, partition: u32) -> Result<&Partition, ReadError> {
        self.partitions
            .get(&(topic.to_owned(), partition))
            .ok_or_else(|| {
                if self.topics.contains_key(topic) {
                    ReadError::UnknownPartition {
                        topic: topic.to_owned(),
                        partition,
                    }
                } else {
                    ReadError::UnknownTopic(topic.to_owned())
                }
            })
    }

    /// Checks a group of writes against the logs as the earlier writes of
    /// the group would leave them, applying nothing: see
    /// [`PartitionLog::append_at`]. Returns each write's batch header.
    fn check_writes(&self, writes: &[LogWrite]) -> Result<Vec<Option<BatchHeader>>, WriteError> {
        let mut tails: BTreeMap<(&str, u32), (u64, Option<i32>)> = BTreeMap::new();
        writes
            .iter()
            .map(|write| {
                let header = write.header()?;
                let part = self.partition(&write.topic, write.partition)?;
                let (log_end, latest_epoch) = tails
                    .entry((write.topic.as_str(), write.partition))
                    .or_insert_with(|| (part.offsets.log_end, part.latest_epoch()));
                if write.base_offset != *log_end {
                    return Err(WriteError::NotAtLogEnd {
                        topic: write.topic.clone(),
                        partition: write.partition,
                        base_offset: write.base_offset,
                        log_end: *log_end,
                    });
                }
                crate::check_write_bounds(write, header.as_ref())?;
                if header.is_some() {
                    if let Some(latest) = *latest_epoch
                        && write.leader_epoch < latest
                    {
                        return Err(WriteError::EpochBehind {
                            topic: write.topic.clone(),
                            partition: write.partition,
                            epoch: write.leader_epoch,
                            latest,
                        });
                    }
                    *latest_epoch = Some(write.leader_epoch);
                }
                *log_end = write.end(header.as_ref());
                Ok(header)
            })
            .collect()
    }

    /// Applies writes that [`State::check_writes`] accepted.
    fn apply_writes(&mut self, writes: &[LogWrite], headers: &[Option<BatchHeader>]) {
        for (write, header) in writes.iter().zip(headers) {
            let key = (write.topic.clone(), write.partition);
            if let (Some(part), Some(header)) = (self.partitions.get_mut(&key), header) {
                part.push(write, header);
            }
            if let Some((producer_id, state)) = &write.producer {
                self.producers
                    .insert((*producer_id, key.0, key.1), state.clone());
            }
        }
    }
}

impl Partition {
    /// Stores a checked batch at the log end, with its base offset and
    /// leader epoch written in, and advances the offsets, the time index and
    /// the epoch table past it.
    fn push(&mut self, write: &LogWrite, header: &BatchHeader) {
        let base_offset = self.offsets.log_end;
        let mut bytes = BytesMut::from(&write.batch[..]);
        set_base_offset(&mut bytes, base_offset);
        set_partition_leader_epoch(&mut bytes, write.leader_epoch);
        if self
            .latest_epoch()
            .is_none_or(|latest| write.leader_epoch > latest)
        {
            self.epochs.insert(write.leader_epoch, base_offset);
        }
        self.bytes += bytes.len() as u64;
        self.log.insert(
            base_offset,
            StoredBatch {
                bytes: bytes.freeze(),
                record_count: header.record_count,
                max_timestamp_ms: header.max_timestamp_ms,
            },
        );
        self.offsets.log_end += u64::from(header.record_count);
        let running_max = self.time.last_key_value().map(|(ts, _)| *ts);
        if running_max.is_none_or(|max| header.max_timestamp_ms > max) {
            self.time.insert(header.max_timestamp_ms, base_offset);
        }
    }

    fn latest_epoch(&self) -> Option<i32> {
        self.epochs.last_key_value().map(|(epoch, _)| *epoch)
    }

    /// The base offset of the batch holding `offset`, if any.
    fn holding_batch(&self, offset: u64) -> Option<u64> {
        self.log
            .range(..=offset)
            .next_back()
            .filter(|(base, batch)| *base + u64::from(batch.record_count) > offset)
            .map(|(base, _)| *base)
    }

    /// See [`PartitionLog::truncate_from`].
    fn truncate_from(&mut self, offset: u64) -> u64 {
        if offset >= self.offsets.log_end {
            return self.offsets.log_end;
        }
        let new_end = self.holding_batch(offset).unwrap_or(offset);
        let removed = self.log.split_off(&new_end);
        self.bytes -= removed.values().map(|b| b.bytes.len() as u64).sum::<u64>();
        self.time.retain(|_, base| *base < new_end);
        self.epochs.retain(|_, start| *start < new_end);
        self.offsets.log_end = new_end;
        self.offsets.log_start = self.offsets.log_start.min(new_end);
        new_end
    }

    fn delete_oldest(&mut self, report: &mut RetentionReport) {
        if let Some((_, batch)) = self.log.pop_first() {
            let size = batch.bytes.len() as u64;
            self.bytes -= size;
            report.batches += 1;
            report.bytes += size;
        }
    }

    /// Moves the log start to the first remaining batch and drops time
    /// index entries below it, keeping the largest dropped timestamp
    /// pointed at the new log start so the running max (and lookups for
    /// timestamps the remaining batches may hold) stay right.
    fn advance_log_start(&mut self) {
        let log_start = self
            .log
            .first_key_value()
            .map_or(self.offsets.log_end, |(base, _)| *base);
        self.offsets.log_start = log_start;
        let mut largest_dropped = None;
        self.time.retain(|ts, base| {
            let keep = *base >= log_start;
            if !keep {
                largest_dropped = Some(*ts);
            }
            keep
        });
        if let Some(ts) = largest_dropped.filter(|_| !self.log.is_empty()) {
            self.time.insert(ts, log_start);
        }
    }
}

impl PartitionLog for MemStore {
    fn append_at(&self, writes: &[LogWrite], durable: bool) -> Result<(), WriteError> {
        self.append_with_state(writes, &[], durable)
    }

    fn skip_to(&self, topic: &str, partition: u32, offset: u64) -> Result<u64, ReadError> {
        let mut inner = self.lock();
        let state = inner.begin_write()?;
        state.partition(topic, partition)?;
        let part = state
            .partitions
            .get_mut(&(topic.to_owned(), partition))
            .ok_or_else(|| ReadError::UnknownTopic(topic.to_owned()))?;
        if offset > crate::MAX_OFFSET {
            return Err(ReadError::OffsetTooLarge(offset));
        }
        if offset > part.offsets.log_end {
            if part.offsets.log_start == part.offsets.log_end {
                part.offsets.log_start = offset;
            }
            part.offsets.log_end = offset;
        }
        Ok(part.offsets.log_end)
    }

    fn truncate_from(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        producers: &[(i64, Bytes)],
    ) -> Result<u64, ReadError> {
        let mut inner = self.lock();
        let state = inner.begin_write()?;
        state.partition(topic, partition)?;
        let key = (topic.to_owned(), partition);
        for (producer_id, bytes) in producers {
            state
                .producers
                .insert((*producer_id, topic.to_owned(), partition), bytes.clone());
        }
        Ok(state
            .partitions
            .get_mut(&key)
            .map_or(offset, |part| part.truncate_from(offset)))
    }

    fn mend_batch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        batch: &[u8],
    ) -> Result<(), WriteError> {
        let mut inner = self.lock();
        let state = inner.begin_write()?;
        state.partition(topic, partition)?;
        let part = state
            .partitions
            .get_mut(&(topic.to_owned(), partition))
            .ok_or_else(|| WriteError::UnknownTopic(topic.to_owned()))?;
        let Some(stored) = part.log.get_mut(&offset) else {
            return Err(WriteError::InvalidBatch(format!(
                "no stored batch at {offset} to mend"
            )));
        };
        let epoch = part
            .epochs
            .iter()
            .rev()
            .find(|(_, start)| **start <= offset)
            .map(|(epoch, _)| *epoch);
        crate::check_mend(
            offset,
            offset + u64::from(stored.record_count),
            epoch,
            batch,
        )?;
        part.bytes = part.bytes - stored.bytes.len() as u64 + batch.len() as u64;
        stored.bytes = Bytes::copy_from_slice(batch);
        Ok(())
    }

    fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_bytes: usize,
        upper: u64,
    ) -> Result<ReadBatches, ReadError> {
        let inner = self.lock();
        let part = inner.state.partition(topic, partition)?;
        let offsets = part.offsets.bounded(upper);
        let from = from.max(offsets.log_start);
        let start = part.holding_batch(from).unwrap_or(from);
        let mut batches = Vec::new();
        let mut total = 0usize;
        for (base, batch) in part.log.range(start..) {
            let too_big = !batches.is_empty() && total + batch.bytes.len() > max_bytes;
            if too_big || base + u64::from(batch.record_count) > offsets.log_end {
                break;
            }
            total += batch.bytes.len();
            batches.push(batch.bytes.clone());
        }
        Ok(ReadBatches { batches, offsets })
    }

    fn offsets(&self, topic: &str, partition: u32) -> Result<PartitionOffsets, ReadError> {
        Ok(self.lock().state.partition(topic, partition)?.offsets)
    }

    fn partition_bytes(&self, topic: &str, partition: u32) -> Result<u64, ReadError> {
        Ok(self.lock().state.partition(topic, partition)?.bytes)
    }

    fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<u64, ReadError> {
        let inner = self.lock();
        let part = inner.state.partition(topic, partition)?;
        Ok(part
            .time
            .range(timestamp_ms..)
            .next()
            .map_or(part.offsets.log_end, |(_, base)| {
                (*base).max(part.offsets.log_start)
            }))
    }

    fn epochs(&self, topic: &str, partition: u32) -> Result<Vec<EpochStart>, ReadError> {
        let inner = self.lock();
        Ok(epoch_table(inner.state.partition(topic, partition)?))
    }

    fn end_offset_for_epoch(
        &self,
        topic: &str,
        partition: u32,
        epoch: i32,
    ) -> Result<Option<EpochEnd>, ReadError> {
        let inner = self.lock();
        let part = inner.state.partition(topic, partition)?;
        Ok(crate::end_offset_for_epoch(
            &epoch_table(part),
            part.offsets.log_end,
            epoch,
        ))
    }

    fn producer_states(&self, topic: &str, partition: u32) -> Result<Vec<(i64, Bytes)>, ReadError> {
        let inner = self.lock();
        inner.state.partition(topic, partition)?;
        Ok(inner
            .state
            .producers
            .iter()
            .filter(|((_, t, p), _)| t == topic && *p == partition)
            .map(|((producer_id, _, _), state)| (*producer_id, state.clone()))
            .collect())
    }

    fn enforce_retention_holding(
        &self,
        now_ms: i64,
        holds: &mut [RetentionHold],
    ) -> Result<RetentionReport, StoreError> {
        let mut inner = self.lock();
        let state = inner.begin_write()?;
        let mut report = RetentionReport::default();
        for ((name, partition), part) in &mut state.partitions {
            let Some(spec) = state.topics.get(name) else {
                continue;
            };
            let before = report.batches;
            let mut allow = |part: &Partition| {
                part.log.first_key_value().is_some_and(|(base, b)| {
                    let end = base + u64::from(b.record_count);
                    let size = b.bytes.len() as u64;
                    RetentionHold::allow(holds, name, *partition, (*base, end, size), part.bytes)
                })
            };
            if let Some(cutoff) = topic::retention_cutoff_ms(spec, now_ms) {
                while part
                    .log
                    .first_key_value()
                    .is_some_and(|(_, b)| b.max_timestamp_ms < cutoff)
                    && !report.step_spent()
                    && allow(part)
                {
                    part.delete_oldest(&mut report);
                }
            }
            while part.log.first_key_value().is_some_and(|(_, b)| {
                topic::oldest_over_size(spec, part.bytes, b.bytes.len() as u64)
            }) && !report.step_spent()
                && allow(part)
            {
                part.delete_oldest(&mut report);
            }
            if report.batches > before {
                part.advance_log_start();
            }
        }
        Ok(report)
    }
}

impl MetaStore for MemStore {
    fn create_topic(&self, spec: &TopicSpec) -> Result<(), TopicError> {
        topic::validate(spec)?;
        let mut inner = self.lock();
        if inner.state.topics.contains_key(&spec.name) {
            return Err(TopicError::Exists(spec.name.clone()));
        }
        let state = inner.begin_write()?;
        state.topics.insert(spec.name.clone(), spec.clone());
        for partition in 0..spec.partitions {
            state
                .partitions
                .insert((spec.name.clone(), partition), Partition::default());
        }
        Ok(())
    }

    fn alter_topic(&self, spec: &TopicSpec) -> Result<(), TopicError> {
        topic::validate(spec)?;
        let mut inner = self.lock();
        let Some(old) = inner.state.topics.get(&spec.name) else {
            return Err(TopicError::NotFound(spec.name.clone()));
        };
        topic::check_alter(old, spec)?;
        let old_partitions = old.partitions;
        let state = inner.begin_write()?;
        state.topics.insert(spec.name.clone(), spec.clone());
        for partition in old_partitions..spec.partitions {
            state
                .partitions
                .insert((spec.name.clone(), partition), Partition::default());
        }
        Ok(())
    }

    fn drain_deleted(&self, _budget: u64) -> Result<bool, StoreError> {
        // Deletion frees a topic's memory at once.
        Ok(false)
    }

    fn delete_topic(&self, name: &str) -> Result<(), TopicError> {
        let mut inner = self.lock();
        if !inner.state.topics.contains_key(name) {
            return Err(TopicError::NotFound(name.to_owned()));
        }
        let state = inner.begin_write()?;
        state.topics.remove(name);
        state.partitions.retain(|(topic, _), _| topic != name);
        state.producers.retain(|(_, topic, _), _| topic != name);
        state.group_offsets.retain(|(_, topic, _), _| topic != name);
        for kind in [ConfigKind::Ingest, ConfigKind::MirrorDestination] {
            state.configs.remove(&(kind.tag(), name.to_owned()));
        }
        Ok(())
    }

    fn topics(&self) -> Result<Vec<TopicSpec>, StoreError> {
        Ok(self.lock().state.topics.values().cloned().collect())
    }

    fn topic(&self, name: &str) -> Result<Option<TopicSpec>, StoreError> {
        Ok(self.lock().state.topics.get(name).cloned())
    }

    fn allocate_producer_id(&self) -> Result<i64, StoreError> {
        let mut inner = self.lock();
        let state = inner.begin_write()?;
        let id = state.next_producer_id;
        state.next_producer_id += 1;
        Ok(id)
    }

    fn commit_offsets(&self, commits: &[OffsetCommit]) -> Result<(), CommitError> {
        group::validate_commits(commits)?;
        if commits.is_empty() {
            return Ok(());
        }
        let mut inner = self.lock();
        for commit in commits {
            inner.state.check_commit_target(commit)?;
        }
        let state = inner.begin_write()?;
        for commit in commits {
            let key = (commit.group.clone(), commit.topic.clone(), commit.partition);
            state.group_offsets.insert(key, commit.offset);
        }
        Ok(())
    }

    fn committed_offsets(&self, group: &str) -> Result<Vec<CommittedOffset>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .state
            .offsets_of_group(group)
            .map(|((_, topic, partition), offset)| CommittedOffset {
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
            })
            .collect())
    }

    fn groups(&self) -> Result<Vec<String>, StoreError> {
        let inner = self.lock();
        let mut groups: Vec<String> = Vec::new();
        for (group, _, _) in inner.state.group_offsets.keys() {
            if groups.last() != Some(group) {
                groups.push(group.clone());
            }
        }
        Ok(groups)
    }

    fn delete_group(&self, group: &str) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        if inner.state.offsets_of_group(group).next().is_none() {
            return Ok(false);
        }
        let state = inner.begin_write()?;
        state.group_offsets.retain(|(g, _, _), _| g != group);
        Ok(true)
    }

    fn put_plugin(
        &self,
        name: &str,
        kind: &str,
        hash: &str,
        wasm: &[u8],
        now_ms: i64,
    ) -> Result<PluginInfo, StoreError> {
        let mut inner = self.lock();
        let previous = inner.state.plugins.get(name).map(|(info, _)| info);
        let info = plugin::next_info(previous, name, kind, hash, wasm, now_ms)?;
        let state = inner.begin_write()?;
        state.plugins.insert(
            name.to_owned(),
            (info.clone(), Bytes::copy_from_slice(wasm)),
        );
        Ok(info)
    }

    fn plugin(&self, name: &str) -> Result<Option<(PluginInfo, Vec<u8>)>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .state
            .plugins
            .get(name)
            .map(|(info, wasm)| (info.clone(), wasm.to_vec())))
    }

    fn plugins(&self) -> Result<Vec<PluginInfo>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .state
            .plugins
            .values()
            .map(|(info, _)| info.clone())
            .collect())
    }

    fn remove_plugin(&self, name: &str) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        if !inner.state.plugins.contains_key(name) {
            return Ok(false);
        }
        inner.begin_write()?.plugins.remove(name);
        Ok(true)
    }

    fn put_config(
        &self,
        kind: ConfigKind,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let state = inner.begin_write()?;
        let key = (kind.tag(), key.to_owned());
        match value {
            Some(value) => state.configs.insert(key, value.to_vec()),
            None => state.configs.remove(&key),
        };
        Ok(())
    }

    fn configs(&self, kind: ConfigKind) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .state
            .configs
            .range((kind.tag(), String::new())..)
            .take_while(|((tag, _), _)| *tag == kind.tag())
            .map(|((_, key), value)| (key.clone(), value.clone()))
            .collect())
    }

    fn pipeline_positions(&self, pipeline: &str) -> Result<Vec<(u32, u64)>, StoreError> {
        let inner = self.lock();
        let range = (pipeline.to_owned(), 0)..=(pipeline.to_owned(), u32::MAX);
        Ok(inner
            .state
            .pipeline_positions
            .range(range)
            .map(|((_, partition), offset)| (*partition, *offset))
            .collect())
    }

    fn pipeline_state(&self, pipeline: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .state
            .pipeline_state
            .get(&(pipeline.to_owned(), key.to_vec()))
            .cloned())
    }

    fn plugin_state_list(
        &self,
        owner: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<crate::StateEntries, StoreError> {
        let inner = self.lock();
        let owner = owner.to_owned();
        let start = match after {
            Some(after) if after >= prefix => {
                std::ops::Bound::Excluded((owner.clone(), after.to_vec()))
            }
            _ => std::ops::Bound::Included((owner.clone(), prefix.to_vec())),
        };
        Ok(inner
            .state
            .pipeline_state
            .range((start, std::ops::Bound::Unbounded))
            .take_while(|((at, key), _)| *at == owner && key.starts_with(prefix))
            .take(limit)
            .map(|((_, key), value)| (key.clone(), value.clone()))
            .collect())
    }

    fn put_plugin_state(
        &self,
        owner: &str,
        changes: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.begin_write()?.put_state(owner, changes);
        Ok(())
    }

    fn delete_pipeline_data(&self, pipeline: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let state = inner.begin_write()?;
        state.pipeline_positions.retain(|(p, _), _| p != pipeline);
        state.pipeline_state.retain(|(p, _), _| p != pipeline);
        Ok(())
    }

    fn delete_plugin_state_owners(&self, prefix: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let state = inner.begin_write()?;
        state
            .pipeline_state
            .retain(|(owner, _), _| !owner.starts_with(prefix));
        Ok(())
    }
}

impl LogStore for MemStore {
    fn append_with_state(
        &self,
        writes: &[LogWrite],
        state: &[StateWrite],
        _durable: bool,
    ) -> Result<(), WriteError> {
        let mut inner = self.lock();
        let stored = inner.begin_write()?;
        let headers = stored.check_writes(writes)?;
        stored.apply_writes(writes, &headers);
        for write in state {
            stored.put_state(&write.owner, &write.changes);
        }
        Ok(())
    }

    fn commit_pipeline(&self, commit: &PipelineCommit) -> Result<(), WriteError> {
        let mut inner = self.lock();
        let state = inner.begin_write()?;
        let headers = state.check_writes(&commit.writes)?;
        state.apply_writes(&commit.writes, &headers);
        state.put_state(&commit.pipeline, &commit.state);
        state.pipeline_positions.insert(
            (commit.pipeline.clone(), commit.source_partition),
            commit.source_next_offset,
        );
        Ok(())
    }
}

/// A partition's epoch table as the trait reports it.
fn epoch_table(part: &Partition) -> Vec<EpochStart> {
    part.epochs
        .iter()
        .map(|(epoch, start_offset)| EpochStart {
            epoch: *epoch,
            start_offset: *start_offset,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use edgebus_proto::batch::{BatchBuilder, ProducerStamp, Record};

    use super::*;

    fn spec(name: &str) -> TopicSpec {
        TopicSpec {
            name: name.to_owned(),
            partitions: 1,
            retention_ms: topic::UNLIMITED,
            retention_bytes: topic::UNLIMITED,
            max_message_bytes: topic::DEFAULT_MAX_MESSAGE_BYTES,
            compression: edgebus_proto::batch::Compression::None,
        }
    }

    /// A one-record batch written at `base_offset`.
    fn write(topic: &str, base_offset: u64) -> LogWrite {
        let mut builder = BatchBuilder::new();
        builder.push(&Record::new("v", 1));
        LogWrite {
            topic: topic.to_owned(),
            partition: 0,
            base_offset,
            leader_epoch: 0,
            batch: builder.finish(ProducerStamp::NONE),
            producer: None,
        }
    }

    fn commit(group: &str, offset: u64) -> OffsetCommit {
        OffsetCommit {
            group: group.to_owned(),
            topic: "t".to_owned(),
            partition: 0,
            offset,
        }
    }

    fn step(next: u64) -> PipelineCommit {
        PipelineCommit {
            pipeline: "p".to_owned(),
            writes: vec![write("t", next)],
            state: vec![(b"k".to_vec(), Some(b"v".to_vec()))],
            source_partition: 0,
            source_next_offset: next,
        }
    }

    #[test]
    fn fail_after_writes_counts_every_write_operation_then_refuses() {
        let store = MemStore::new();
        store.fail_after_writes(10);
        store.create_topic(&spec("t")).unwrap();
        store.append_at(&[write("t", 0)], true).unwrap();
        store.allocate_producer_id().unwrap();
        store.commit_offsets(&[commit("g", 1)]).unwrap();
        assert!(store.delete_group("g").unwrap());
        store.put_plugin("f", "filter", "h", b"wasm", 1).unwrap();
        assert!(store.remove_plugin("f").unwrap());
        store
            .put_config(ConfigKind::Ingest, "t", Some(b"c"))
            .unwrap();
        store.commit_pipeline(&step(1)).unwrap();
        store.delete_pipeline_data("p").unwrap();
        let injected = |result: Result<(), StoreError>| {
            assert!(
                matches!(result, Err(StoreError::Injected(10))),
                "{result:?}"
            );
        };
        assert_eq!(
            store.append_at(&[write("t", 2)], true),
            Err(WriteError::Store(StoreError::Injected(10)))
        );
        assert!(matches!(
            store.truncate_from("t", 0, 0, &[]),
            Err(ReadError::Store(StoreError::Injected(10)))
        ));
        injected(store.enforce_retention(0).map(drop));
        injected(store.allocate_producer_id().map(drop));
        injected(store.put_plugin("f", "filter", "h", b"wasm", 2).map(drop));
        injected(store.put_config(ConfigKind::Ingest, "t", None));
        injected(store.delete_pipeline_data("p"));
        assert!(matches!(
            store.create_topic(&spec("u")),
            Err(TopicError::Store(StoreError::Injected(10)))
        ));
        assert!(matches!(
            store.delete_topic("t"),
            Err(TopicError::Store(StoreError::Injected(10)))
        ));
        assert!(matches!(
            store.commit_offsets(&[commit("g", 2)]),
            Err(CommitError::Store(StoreError::Injected(10)))
        ));
        assert!(matches!(
            store.commit_pipeline(&step(2)),
            Err(WriteError::Store(StoreError::Injected(10)))
        ));
        assert_eq!(store.committed_offsets("g").unwrap(), vec![]);
        assert_eq!(store.plugins().unwrap(), vec![]);
        assert_eq!(
            store.configs(ConfigKind::Ingest).unwrap(),
            vec![("t".to_owned(), b"c".to_vec())]
        );
        assert_eq!(store.pipeline_positions("p").unwrap(), vec![]);
        assert_eq!(store.offsets("t", 0).unwrap().log_end, 2);
    }

    #[test]
    fn fail_after_writes_refused_write_applies_nothing_and_reads_still_work() {
        let store = MemStore::new();
        store.create_topic(&spec("t")).unwrap();
        store.fail_after_writes(0);
        assert!(
            store
                .append_at(&[write("t", 0), write("t", 1)], true)
                .is_err()
        );
        assert_eq!(store.offsets("t", 0).unwrap(), PartitionOffsets::default());
        assert!(
            store
                .read("t", 0, 0, usize::MAX, u64::MAX)
                .unwrap()
                .batches
                .is_empty()
        );
        assert_eq!(store.topics().unwrap(), vec![spec("t")]);
    }

    #[test]
    fn clear_faults_lets_writes_through_again() {
        let store = MemStore::new();
        store.fail_after_writes(0);
        assert!(store.allocate_producer_id().is_err());
        store.clear_faults();
        assert_eq!(store.allocate_producer_id().unwrap(), 0);
    }

    #[test]
    fn reopen_keeps_committed_state_and_drops_faults() {
        let store = MemStore::new();
        store.create_topic(&spec("t")).unwrap();
        store.append_at(&[write("t", 0)], true).unwrap();
        store.fail_after_writes(0);
        let reopened = store.reopen();
        assert_eq!(reopened.offsets("t", 0).unwrap().log_end, 1);
        reopened.append_at(&[write("t", 1)], true).unwrap();
        assert_eq!(
            store.offsets("t", 0).unwrap().log_end,
            1,
            "the reopened store is independent of the old one"
        );
    }
}
