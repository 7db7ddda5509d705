//! The writer's hub side of mirroring: destination topics bound to one
//! edge mirror each, and that mirror's appends of stored edge batches at
//! exactly the destination partition's log end.
//!
//! Both run on the writer thread, after every append queued before them,
//! so nothing can slip between the check of the log end and the append,
//! nor between a destination's creation and its binding. Ordinary appends
//! to a bound topic are refused in [`Shell::decide_into`] (any door: QUIC,
//! Kafka, MQTT) and in pipeline steps, so the destination's offsets stay
//! the source's.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use bytes::Bytes;
use edgebus_core::partition::{AckLevel, AppendRequest};
use edgebus_proto::batch;
use edgebus_store::{ConfigKind, LogStore, StoreError, TopicError, TopicSpec};
use tokio::sync::oneshot;

use super::{AppendFailure, Group, Op, Ordered, Shell, Writer, write_failure};

/// Destination topics and the mirror each is bound to.
#[derive(Debug, Default)]
pub(super) struct Destinations(RwLock<HashMap<String, String>>);

impl Destinations {
    /// The bindings stored in `store`.
    pub(super) fn load(store: &dyn LogStore) -> Result<Destinations, StoreError> {
        let mut map = HashMap::new();
        for (topic, mirror) in store.configs(ConfigKind::MirrorDestination)? {
            map.insert(topic, String::from_utf8_lossy(&mirror).into_owned());
        }
        Ok(Destinations(RwLock::new(map)))
    }

    pub(super) fn get(&self, topic: &str) -> Option<String> {
        let map = self.0.read().unwrap_or_else(PoisonError::into_inner);
        map.get(topic).cloned()
    }

    fn set(&self, topic: &str, mirror: &str) {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        map.insert(topic.to_owned(), mirror.to_owned());
    }

    pub(super) fn remove(&self, topic: &str) {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        map.remove(topic);
    }
}

/// Why a mirror request was refused on the hub.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum MirrorRefused {
    /// The append was not at the partition's log end.
    #[error(
        "mirror append to {topic}/{partition} at offset {base_offset}, but the hub's log \
         ends at {log_end}"
    )]
    NotAtLogEnd {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Where the mirror appended.
        base_offset: u64,
        /// The hub's log end.
        log_end: u64,
    },
    /// The topic is not this mirror's destination.
    #[error("topic {topic:?} {why}")]
    Conflict {
        /// Topic.
        topic: String,
        /// What it is instead.
        why: String,
    },
    /// A batch of the payload is not a valid stored batch at its place.
    #[error("mirror batch at offset {offset}: {detail}")]
    InvalidBatch {
        /// Where it was to go.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// The append itself failed; nothing of it was stored.
    #[error(transparent)]
    Append(#[from] AppendFailure),
    /// The topic could not be created.
    #[error("creating the destination: {0}")]
    Create(String),
}

impl From<TopicError> for MirrorRefused {
    fn from(e: TopicError) -> Self {
        MirrorRefused::Create(e.to_string())
    }
}

/// Stored edge batches for one destination partition.
pub struct MirrorBatches {
    /// The mirror's identity.
    pub mirror: String,
    /// Destination topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Base offset of the first batch: must be the log end.
    pub base_offset: u64,
    /// Whole batches, in offset order, each CRC-checked here.
    pub batches: Vec<Bytes>,
}

/// Offsets of a destination partition that will never hold records: the
/// edge deleted them undelivered.
#[derive(Debug)]
pub struct MirrorSkip {
    /// The mirror's identity.
    pub mirror: String,
    /// Destination topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Must be the log end.
    pub from: u64,
    /// The new log end.
    pub to: u64,
}

/// A filtered link's output and checkpoint for one partition.
#[derive(Debug)]
pub struct MirrorCommit {
    /// The mirror's identity.
    pub mirror: String,
    /// Destination topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Must be the mirror's checkpoint.
    pub source_from: u64,
    /// The checkpoint after these records.
    pub source_to: u64,
    /// The records, each with its source position in headers.
    pub batches: Vec<Bytes>,
}

/// The pipeline-position name a filtered mirror's checkpoints are kept
/// under on the hub (pipeline names cannot hold `/`).
fn checkpoint_name(mirror: &str) -> String {
    format!("mirror/{mirror}")
}

impl Writer {
    /// Appends a filtered link's records at the partition's log end and
    /// moves the mirror's checkpoint, in one durable transaction; the
    /// checkpoint must be `source_from`. Returns the new checkpoint.
    pub async fn mirror_commit(&self, commit: MirrorCommit) -> Result<u64, MirrorRefused> {
        self.call(
            |reply| {
                Op::Ordered(Ordered::MirrorCommit {
                    commit: Box::new(commit),
                    reply,
                })
            },
            || Err(MirrorRefused::Append(AppendFailure::Stopped)),
        )
        .await
    }

    /// Moves a destination partition's log end over offsets its edge
    /// deleted undelivered; returns the new log end.
    pub async fn mirror_skip(&self, skip: MirrorSkip) -> Result<u64, MirrorRefused> {
        self.call(
            |reply| Op::Ordered(Ordered::MirrorSkip { skip, reply }),
            || Err(MirrorRefused::Append(AppendFailure::Stopped)),
        )
        .await
    }

    /// The mirror `topic` is bound to, if it is a mirror destination.
    pub fn mirror_of(&self, topic: &str) -> Option<String> {
        self.destinations.get(topic)
    }

    /// Makes `spec` the destination of `mirror`: creates it if it does not
    /// exist and binds it, in one step on the writer thread. An existing
    /// topic is accepted only if it is this mirror's already, with the same
    /// partition count. Returns each partition's log end (with `filtered`,
    /// the mirror's source checkpoint instead) and whether the topic was
    /// created.
    pub async fn open_mirror_destination(
        &self,
        spec: TopicSpec,
        mirror: String,
        filtered: bool,
    ) -> Result<(Vec<u64>, bool), MirrorRefused> {
        self.call(
            |reply| {
                Op::Ordered(Ordered::MirrorOpen {
                    spec,
                    mirror,
                    filtered,
                    reply,
                })
            },
            || Err(MirrorRefused::Append(AppendFailure::Stopped)),
        )
        .await
    }

    /// Appends a mirror's batches at the partition's log end in one durable
    /// transaction; returns the new log end.
    pub async fn mirror_append(&self, batches: MirrorBatches) -> Result<u64, MirrorRefused> {
        self.call(
            |reply| {
                Op::Ordered(Ordered::MirrorAppend {
                    batches: Box::new(batches),
                    reply,
                })
            },
            || Err(MirrorRefused::Append(AppendFailure::Stopped)),
        )
        .await
    }
}

/// The reply channel of a mirror open.
pub(super) type OpenReply = oneshot::Sender<Result<(Vec<u64>, bool), MirrorRefused>>;

impl Shell {
    pub(super) fn open_mirror(
        &mut self,
        spec: &TopicSpec,
        mirror: &str,
        filtered: bool,
    ) -> Result<(Vec<u64>, bool), MirrorRefused> {
        let conflict = |why: String| MirrorRefused::Conflict {
            topic: spec.name.clone(),
            why,
        };
        let created = match self
            .store
            .topic(&spec.name)
            .map_err(AppendFailure::from_store)?
        {
            None => {
                self.store.create_topic(spec)?;
                for partition in 0..spec.partitions {
                    self.watermarks.set((spec.name.clone(), partition), 0);
                }
                self.store
                    .put_config(
                        ConfigKind::MirrorDestination,
                        &spec.name,
                        Some(mirror.as_bytes()),
                    )
                    .map_err(AppendFailure::from_store)?;
                self.destinations.set(&spec.name, mirror);
                true
            }
            Some(existing) => {
                match self.destinations.get(&spec.name) {
                    Some(bound) if bound == mirror => {}
                    Some(bound) => {
                        return Err(conflict(format!(
                            "is the destination of another mirror ({bound})"
                        )));
                    }
                    None => {
                        return Err(conflict(
                            "exists and is not a mirror destination; delete it or mirror \
                             into another topic"
                                .into(),
                        ));
                    }
                }
                if existing.partitions != spec.partitions {
                    return Err(conflict(format!(
                        "has {} partitions, the source has {}",
                        existing.partitions, spec.partitions
                    )));
                }
                false
            }
        };
        if filtered {
            let checkpoints = self.checkpoints(mirror)?;
            let ends = (0..spec.partitions)
                .map(|p| checkpoints.get(&p).copied().unwrap_or(0))
                .collect();
            return Ok((ends, created));
        }
        let ends = (0..spec.partitions)
            .map(|p| Ok(self.store.offsets(&spec.name, p)?.log_end))
            .collect::<Result<Vec<u64>, AppendFailure>>()?;
        Ok((ends, created))
    }

    /// A filtered mirror's source checkpoints, by partition: stored as the
    /// positions of a pipeline step named after the mirror.
    fn checkpoints(&self, mirror: &str) -> Result<HashMap<u32, u64>, MirrorRefused> {
        Ok(self
            .store
            .pipeline_positions(&checkpoint_name(mirror))
            .map_err(AppendFailure::from_store)?
            .into_iter()
            .collect())
    }

    /// See [`Writer::mirror_commit`].
    pub(super) fn mirror_commit(&mut self, c: MirrorCommit) -> Result<u64, MirrorRefused> {
        if self.destinations.get(&c.topic).as_deref() != Some(c.mirror.as_str()) {
            return Err(MirrorRefused::Conflict {
                topic: c.topic,
                why: format!("is not the destination of mirror {}", c.mirror),
            });
        }
        let checkpoint = self
            .checkpoints(&c.mirror)?
            .get(&c.partition)
            .copied()
            .unwrap_or(0);
        if checkpoint != c.source_from || c.source_to < c.source_from {
            return Err(MirrorRefused::NotAtLogEnd {
                topic: c.topic,
                partition: c.partition,
                base_offset: c.source_from,
                log_end: checkpoint,
            });
        }
        let mut outputs = Vec::with_capacity(c.batches.len());
        for bytes in c.batches {
            let header = batch::validate(&bytes).map_err(|e| MirrorRefused::InvalidBatch {
                offset: c.source_from,
                detail: e.to_string(),
            })?;
            outputs.push(super::Output {
                topic: c.topic.clone(),
                partition: c.partition,
                batch: bytes,
                record_count: header.record_count,
                sequence: None,
            });
        }
        let step = super::PipelineStep {
            pipeline: checkpoint_name(&c.mirror),
            outputs,
            state: Vec::new(),
            source_partition: c.partition,
            source_next_offset: c.source_to,
            fence: None,
        };
        self.commit_step(step, Some(&c.mirror))
            .map_err(|e| match e {
                super::StepError::Target(e) => MirrorRefused::Append(e),
                super::StepError::Store(e) => MirrorRefused::Append(write_failure(&e)),
            })?;
        Ok(c.source_to)
    }

    /// See [`Writer::mirror_skip`]. The partition's engine is dropped and
    /// reloaded from the store on next use, at the new log end.
    pub(super) fn mirror_skip(&mut self, s: MirrorSkip) -> Result<u64, MirrorRefused> {
        if self.destinations.get(&s.topic).as_deref() != Some(s.mirror.as_str()) {
            return Err(MirrorRefused::Conflict {
                topic: s.topic,
                why: format!("is not the destination of mirror {}", s.mirror),
            });
        }
        let key = (s.topic.clone(), s.partition);
        let engines = Arc::clone(&self.engines);
        let mut engines = engines.lock().unwrap_or_else(PoisonError::into_inner);
        self.load(&mut engines, &key)?;
        let log_end = engines.get(&key).map_or(0, |slot| slot.engine.log_end());
        if log_end != s.from || s.to < s.from {
            return Err(MirrorRefused::NotAtLogEnd {
                topic: s.topic,
                partition: s.partition,
                base_offset: s.from,
                log_end,
            });
        }
        let end = self
            .store
            .skip_to(&s.topic, s.partition, s.to)
            .map_err(AppendFailure::from)?;
        engines.remove(&key);
        self.watermarks.set(key, end);
        self.notifier.publish(&s.topic, s.partition, end);
        Ok(end)
    }

    /// Checks and appends a mirror's batches: see [`Writer::mirror_append`].
    pub(super) fn mirror_append(&mut self, m: MirrorBatches) -> Result<u64, MirrorRefused> {
        if self.destinations.get(&m.topic).as_deref() != Some(m.mirror.as_str()) {
            return Err(MirrorRefused::Conflict {
                topic: m.topic,
                why: format!("is not the destination of mirror {}", m.mirror),
            });
        }
        let key = (m.topic.clone(), m.partition);
        let engines = Arc::clone(&self.engines);
        let mut engines = engines.lock().unwrap_or_else(PoisonError::into_inner);
        self.load(&mut engines, &key)?;
        let log_end = engines.get(&key).map_or(0, |slot| slot.engine.log_end());
        if log_end != m.base_offset {
            return Err(MirrorRefused::NotAtLogEnd {
                topic: m.topic,
                partition: m.partition,
                base_offset: m.base_offset,
                log_end,
            });
        }
        // Check every batch before deciding any: a bad one refuses the lot.
        let mut next = m.base_offset;
        let mut counts = Vec::with_capacity(m.batches.len());
        for bytes in &m.batches {
            let invalid = |detail: String| MirrorRefused::InvalidBatch {
                offset: next,
                detail,
            };
            let header = batch::verify_crc(bytes).map_err(|e| invalid(e.to_string()))?;
            if header.base_offset != next || header.record_count == 0 {
                return Err(invalid(format!(
                    "the batch says base offset {} with {} records",
                    header.base_offset, header.record_count
                )));
            }
            counts.push(header.record_count);
            next = header.next_offset();
        }
        let mut group = Group::default();
        for (bytes, record_count) in m.batches.into_iter().zip(counts) {
            let request = AppendRequest {
                id: self.next_id(),
                record_count,
                sequence: None,
                acks: AckLevel::None,
            };
            self.submit(&mut engines, &key, request, bytes, None, &mut group);
        }
        drop(engines);
        if group.writes.is_empty() {
            return Ok(log_end);
        }
        let started = Instant::now();
        let outcome = self.store.append_at(&group.writes, true);
        self.metrics.writer.commit(started.elapsed(), true);
        match outcome {
            Ok(()) => {
                self.count_appended(&group.writes);
                self.written(group.last, true);
                Ok(next)
            }
            Err(e) => {
                self.failed(&group.last, &e);
                Err(MirrorRefused::Append(write_failure(&e)))
            }
        }
    }
}

impl AppendFailure {
    fn from_store(e: StoreError) -> AppendFailure {
        match e {
            StoreError::DiskFull(detail) => AppendFailure::DiskFull(detail),
            other => AppendFailure::Storage(other.to_string()),
        }
    }
}
