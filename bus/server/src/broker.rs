//! Request handling: what each request does, independent of how it arrived.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::{Bytes, BytesMut};
use edgebus_core::partition::AckLevel;
use edgebus_core::producer::{AppendRefused, SequenceSpan};
use edgebus_proto::DecodeError;
use edgebus_proto::ErrorCode;
use edgebus_proto::batch;
use edgebus_proto::batch::{BatchBuilder, BatchHeader, BatchInfo, Compression, Record};
use edgebus_proto::frame::{
    Acks, PartitionInfo, PartitionOffset, Position, Request, Response, TopicSpec,
};
use edgebus_store::{LogStore, PartitionOffsets, ReadBatches, ReadError, TopicError};
use tokio::sync::oneshot;

use crate::config::Limits;
use crate::groups::Groups;
use crate::notify::Notifier;
use crate::pipelines::Pipelines;
use crate::plugins::{Attachment, Ingested, Plugins, batches, dlq_topic};
use crate::writer::{Append, AppendFailure, AppendResult, DeadLetters, Writer};

/// Shared broker state: the store, the writer, and a cache of topic specs
/// so a produce never waits on a read transaction to validate.
#[derive(Clone)]
pub struct Broker {
    store: Arc<dyn LogStore>,
    writer: Writer,
    notifier: Notifier,
    topics: Arc<RwLock<HashMap<String, TopicSpec>>>,
    limits: Arc<Limits>,
    groups: Groups,
    plugins: Arc<Plugins>,
    pipelines: Pipelines,
}

/// A response, or nothing for `acks=none`.
pub type Reply = Option<Response>;

impl Broker {
    /// Wraps a store, loading its topics and starting the writer.
    pub fn new(
        store: Arc<dyn LogStore>,
        limits: Limits,
        plugins: Arc<Plugins>,
    ) -> Result<Broker, edgebus_store::StoreError> {
        let groups = Groups::default();
        let topics = store
            .topics()?
            .into_iter()
            .map(|t| {
                groups.set_topic(&t.name, t.partitions);
                (t.name.clone(), t)
            })
            .collect();
        let notifier = Notifier::default();
        let writer = Writer::spawn(
            store.clone(),
            notifier.clone(),
            limits.max_group_commit_bytes,
        )?;
        Ok(Broker {
            store,
            writer,
            notifier,
            topics: Arc::new(RwLock::new(topics)),
            limits: Arc::new(limits),
            groups,
            plugins,
            pipelines: Pipelines::default(),
        })
    }

    /// The plugin registry and attachments.
    pub fn plugins(&self) -> &Arc<Plugins> {
        &self.plugins
    }

    /// The running pipelines.
    pub fn pipelines(&self) -> &Pipelines {
        &self.pipelines
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn LogStore> {
        &self.store
    }

    /// The consumer-group coordinator.
    pub fn groups(&self) -> &Groups {
        &self.groups
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The group-commit writer.
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// The log-end notifier.
    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// A topic's configuration, from the cache.
    pub fn topic_spec(&self, topic: &str) -> Option<TopicSpec> {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
            .cloned()
    }

    /// Validates a produce and hands it to the writer. Errors found before
    /// the writer (unknown topic, corrupt batch, oversized record) come back
    /// at once.
    pub async fn produce(
        &self,
        topic: String,
        partition: u32,
        acks: Acks,
        batch: Bytes,
    ) -> Result<oneshot::Receiver<AppendResult>, Response> {
        let Some(spec) = self.topic_spec(&topic) else {
            return Err(Response::error(
                ErrorCode::UnknownTopic,
                format!("unknown topic {topic:?}"),
            ));
        };
        if partition >= spec.partitions {
            return Err(Response::error(
                ErrorCode::UnknownPartition,
                format!("topic {topic:?} has {} partitions", spec.partitions),
            ));
        }
        let BatchInfo {
            header,
            largest_record_bytes,
            ..
        } = batch::inspect(&batch).map_err(|e| {
            let code = match e {
                DecodeError::UnsupportedCompression(_) => ErrorCode::UnsupportedCompression,
                _ => ErrorCode::CorruptBatch,
            };
            Response::error(code, e.to_string())
        })?;
        if header.attributes.is_transactional() || header.attributes.is_control() {
            return Err(Response::error(
                ErrorCode::InvalidRequest,
                "transactional and control batches are not supported",
            ));
        }
        if largest_record_bytes > spec.max_message_bytes as usize {
            return Err(Response::error(
                ErrorCode::RecordTooLarge,
                format!(
                    "record of {largest_record_bytes} bytes exceeds max.message.bytes {} of topic {topic:?}",
                    spec.max_message_bytes
                ),
            ));
        }
        let acks = ack_level(acks);
        let sequence = header.producer.is_idempotent().then_some(SequenceSpan {
            producer: header.producer,
            record_count: header.record_count,
        });
        if let Some(chain) = self.plugins.ingest_chain(&topic) {
            return self
                .produce_through_chain(topic, partition, acks, batch, sequence, chain)
                .await;
        }
        let batch = compress_for(&spec, batch).await?;
        let append = Append {
            topic,
            partition,
            record_count: header.record_count,
            batch,
            sequence,
            acks,
            dead_letters: None,
        };
        Ok(self.writer.append(append).await)
    }

    /// Runs the topic's ingest chain, then appends what it produced, with
    /// its dead letters in the same transaction. An idempotent producer's
    /// sequence advances by its original batch even when the chain drops,
    /// rewrites or rejects records, so its next batch is still in order and
    /// a retry is still recognised.
    async fn produce_through_chain(
        &self,
        topic: String,
        partition: u32,
        acks: AckLevel,
        batch: Bytes,
        sequence: Option<SequenceSpan>,
        chain: Arc<Attachment>,
    ) -> Result<oneshot::Receiver<AppendResult>, Response> {
        let nothing = |dead_letters| Append {
            topic: topic.clone(),
            partition,
            batch: Bytes::new(),
            record_count: 0,
            sequence,
            acks,
            dead_letters,
        };
        // A retry of a batch already stored is answered by the engine from
        // its dedup state, without running the chain again: its dead
        // letters and plugin state changes would otherwise happen twice.
        if let Some(span) = sequence
            && self
                .writer
                .duplicate_of(&topic, partition, span.producer, span.record_count)
                .is_some()
        {
            return Ok(self.writer.append(nothing(None)).await);
        }
        let records = batch::records(&batch)
            .map_err(|e| Response::error(ErrorCode::CorruptBatch, e.to_string()))?;
        let (plugins, t) = (self.plugins.clone(), topic.clone());
        let ingested = tokio::task::spawn_blocking(move || plugins.run_ingest(&t, &chain, records))
            .await
            .map_err(|e| Response::error(ErrorCode::StorageError, format!("plugin task: {e}")))?;
        let (records, dead_letters) = match ingested {
            Ingested::Unchanged => {
                let record_count = BatchHeader::parse(&batch)
                    .map_err(|e| Response::error(ErrorCode::CorruptBatch, e.to_string()))?
                    .record_count;
                let batch = self.compress_for_topic(&topic, batch).await?;
                let append = Append {
                    record_count,
                    batch,
                    ..nothing(None)
                };
                return Ok(self.writer.append(append).await);
            }
            Ingested::Refused(response) => {
                // A final refusal is never retried, so the producer's next
                // batch follows it: advance the sequence past it. A
                // retriable one (halted, storage) will be resent with the
                // same sequence and must then be stored, not deduplicated.
                let retriable = match &response {
                    Response::Error { code, .. } => {
                        ErrorCode::from_u16(*code).is_some_and(ErrorCode::is_retriable)
                    }
                    _ => false,
                };
                if sequence.is_some() && !retriable {
                    let _ = self.writer.append(nothing(None)).await.await;
                }
                return Err(response);
            }
            Ingested::Records {
                records,
                dead_letters,
            } => (records, dead_letters),
        };
        let dead_letters = if dead_letters.is_empty() {
            None
        } else {
            let dlq = self.ensure_dlq(&topic).await?;
            let batches = batches(
                &dead_letters,
                edgebus_client::producer::DEFAULT_BATCH_MAX_BYTES,
            )
            .into_iter()
            .map(|b| {
                let count = BatchHeader::parse(&b).map_or(0, |h| h.record_count);
                (b, count)
            })
            .collect();
            Some(DeadLetters {
                topic: dlq,
                batches,
            })
        };
        let append = match plugins_batches(&records) {
            Some(b) => {
                let record_count = BatchHeader::parse(&b)
                    .map_err(|e| Response::error(ErrorCode::CorruptBatch, e.to_string()))?
                    .record_count;
                let b = self.compress_for_topic(&topic, b).await?;
                Append {
                    batch: b,
                    record_count,
                    ..nothing(dead_letters)
                }
            }
            None => nothing(dead_letters),
        };
        Ok(self.writer.append(append).await)
    }

    /// [`compress_for`] the topic's spec, if it still exists.
    async fn compress_for_topic(&self, topic: &str, batch: Bytes) -> Result<Bytes, Response> {
        match self.topic_spec(topic) {
            Some(spec) => compress_for(&spec, batch).await,
            None => Ok(batch),
        }
    }

    /// Creates a topic, ordered with appends through the writer, and
    /// registers it with the topic cache and the group coordinator.
    pub async fn create_topic(&self, mut spec: TopicSpec) -> Result<(), TopicError> {
        if spec.max_message_bytes == 0 {
            spec.max_message_bytes = self.limits.max_message_bytes;
        }
        self.writer.create_topic(spec.clone()).await?;
        self.groups.set_topic(&spec.name, spec.partitions);
        self.topics_mut().insert(spec.name.clone(), spec);
        Ok(())
    }

    /// The dead-letter topic of `topic`, created (one partition, kept
    /// forever) on first use.
    pub async fn ensure_dlq(&self, topic: &str) -> Result<String, Response> {
        let dlq = dlq_topic(topic);
        if self.topic_spec(&dlq).is_none() {
            let spec = TopicSpec {
                name: dlq.clone(),
                partitions: 1,
                retention_ms: -1,
                retention_bytes: -1,
                max_message_bytes: self.limits.max_message_bytes,
                compression: edgebus_proto::batch::Compression::None,
            };
            match self.create_topic(spec).await {
                Ok(()) | Err(TopicError::Exists(_)) => {}
                Err(e) => return Err(Failure::from(e).0),
            }
        }
        Ok(dlq)
    }

    /// Writes dead letters to `<topic>.dlq`, creating it on first use, and
    /// waits for the commit: a failed record is never acknowledged as
    /// handled before its dead letter is stored.
    pub async fn append_dead_letters(
        &self,
        topic: &str,
        letters: &[Record],
        durable: bool,
    ) -> Result<(), Response> {
        let dlq = self.ensure_dlq(topic).await?;
        for batch in batches(letters, edgebus_client::producer::DEFAULT_BATCH_MAX_BYTES) {
            let header = BatchHeader::parse(&batch)
                .map_err(|e| Response::error(ErrorCode::CorruptBatch, e.to_string()))?;
            let append = Append {
                topic: dlq.clone(),
                partition: 0,
                batch,
                record_count: header.record_count,
                sequence: None,
                acks: if durable {
                    AckLevel::Durable
                } else {
                    AckLevel::Leader
                },
                dead_letters: None,
            };
            match self.writer.append(append).await.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(Failure::from(e).0),
                Err(_) => return Err(Response::error(ErrorCode::ShuttingDown, "writer stopped")),
            }
        }
        Ok(())
    }

    /// Handles every request except `Produce` and `Subscribe`, which are
    /// stream-shaped and live in [`crate::server`].
    pub async fn handle(&self, request: Request) -> Response {
        let this = self.clone();
        match request {
            Request::CreateTopic(spec) => match self.create_topic(spec).await {
                Ok(()) => Response::TopicCreated,
                Err(e) => Failure::from(e).0,
            },
            Request::DeleteTopic { name } => match self.writer.delete_topic(name.clone()).await {
                Ok(()) => {
                    self.topics_mut().remove(&name);
                    self.groups.remove_topic(&name);
                    self.plugins.topic_deleted(&name);
                    Response::TopicDeleted
                }
                Err(e) => Failure::from(e).0,
            },
            Request::ListTopics => {
                let mut topics: Vec<TopicSpec> = self
                    .topics
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .cloned()
                    .collect();
                topics.sort_by(|a, b| a.name.cmp(&b.name));
                Response::Topics(topics)
            }
            Request::DescribeTopic { name } => {
                let Some(spec) = self.topic_spec(&name) else {
                    return unknown_topic(&name);
                };
                this.blocking(move |b| {
                    let mut partitions = Vec::with_capacity(spec.partitions as usize);
                    for p in 0..spec.partitions {
                        let o = b.offsets(&spec.name, p)?;
                        partitions.push(PartitionInfo {
                            partition: p,
                            log_start: o.log_start,
                            log_end: o.log_end,
                        });
                    }
                    Ok::<_, ReadError>(Response::TopicDescription { spec, partitions })
                })
                .await
            }
            Request::InitProducer => {
                this.blocking(|b| {
                    b.store
                        .allocate_producer_id()
                        .map(|producer_id| Response::ProducerInit {
                            producer_id,
                            producer_epoch: 0,
                        })
                        .map_err(ReadError::from)
                })
                .await
            }
            Request::Fetch {
                topic,
                partition,
                from,
                max_bytes,
            } => match self.read(&topic, partition, from, max_bytes).await {
                Ok(read) => fetched(read),
                Err(e) => e,
            },
            Request::ListOffsets {
                topic,
                partition,
                position,
            } => match self.resolve(&topic, partition, position).await {
                Ok(offset) => Response::Offset { offset },
                Err(e) => e,
            },
            Request::JoinGroup {
                group,
                member_id,
                topics,
                session_timeout_ms,
                strategy,
            } => self
                .groups
                .join(&group, &member_id, &topics, session_timeout_ms, strategy),
            Request::Heartbeat {
                group,
                member_id,
                owned,
                wait_ms,
            } => {
                self.groups
                    .heartbeat(&group, &member_id, &owned, wait_ms)
                    .await
            }
            Request::LeaveGroup { group, member_id } => self.groups.leave(&group, &member_id),
            Request::CommitOffsets {
                group,
                member_id,
                epoch,
                offsets,
            } => {
                self.groups
                    .commit(self, &group, &member_id, epoch, offsets)
                    .await
            }
            Request::FetchOffsets { group } => {
                this.blocking(move |b| {
                    b.store
                        .committed_offsets(&group)
                        .map(|offsets| {
                            Response::CommittedOffsets(
                                offsets
                                    .into_iter()
                                    .map(|c| PartitionOffset {
                                        topic: c.topic,
                                        partition: c.partition,
                                        offset: c.offset,
                                    })
                                    .collect(),
                            )
                        })
                        .map_err(ReadError::from)
                })
                .await
            }
            Request::ListGroups => {
                this.blocking(|b| Ok::<_, ReadError>(b.groups.list(&*b.store)))
                    .await
            }
            Request::DescribeGroup { group } => {
                this.blocking(move |b| {
                    let log_end = |t: &str, p| b.high_watermark(t, p);
                    Ok::<_, ReadError>(b.groups.describe(&*b.store, &group, log_end))
                })
                .await
            }
            Request::ResetOffsets { group, topic, to } => {
                self.groups.reset(self, &group, &topic, to).await
            }
            Request::DeleteGroup { group } => {
                this.blocking(move |b| Ok::<_, ReadError>(b.groups.delete(&*b.store, &group)))
                    .await
            }
            Request::PluginAdd { name, wasm } => {
                this.blocking(move |b| {
                    Ok::<_, ReadError>(b.plugins.add(&name, &wasm, crate::retention::now_ms()))
                })
                .await
            }
            Request::PluginList => {
                this.blocking(|b| Ok::<_, ReadError>(b.plugins.list(None, |n| b.plugin_users(n))))
                    .await
            }
            Request::PluginDescribe { name } => {
                this.blocking(move |b| {
                    Ok::<_, ReadError>(b.plugins.list(Some(&name), |n| b.plugin_users(n)))
                })
                .await
            }
            Request::PluginRemove { name } => {
                this.blocking(move |b| {
                    Ok::<_, ReadError>(b.plugins.remove(&name, b.plugin_users(&name)))
                })
                .await
            }
            Request::SetIngest {
                topic,
                chain,
                on_failure,
            } => {
                if self.topic_spec(&topic).is_none() {
                    return unknown_topic(&topic);
                }
                this.blocking(move |b| {
                    Ok::<_, ReadError>(b.plugins.set_ingest(&topic, chain, on_failure))
                })
                .await
            }
            Request::TopicPlugins { topic } => {
                if self.topic_spec(&topic).is_none() {
                    return unknown_topic(&topic);
                }
                self.plugins.topic_plugins(&topic)
            }
            Request::PipelineCreate {
                name,
                from,
                to,
                chain,
                on_failure,
            } => {
                self.pipelines
                    .create(self, &name, &from, &to, chain, on_failure)
                    .await
            }
            Request::PipelineList => self.pipelines.describe(None),
            Request::PipelineDescribe { name } => self.pipelines.describe(Some(&name)),
            Request::PipelineDelete { name } => self.pipelines.delete(self, &name).await,
            Request::Produce { .. } | Request::Subscribe { .. } => Response::error(
                ErrorCode::InvalidRequest,
                "produce and subscribe are stream requests",
            ),
        }
    }

    /// Everywhere a plugin is attached: ingest chains and pipelines.
    pub fn plugin_users(&self, name: &str) -> Vec<String> {
        self.plugins.users(name, self.pipelines.users(name))
    }

    fn topics_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, TopicSpec>> {
        self.topics.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a store call on the blocking pool and maps its error.
    async fn blocking<E: Into<Failure> + Send + 'static>(
        self,
        f: impl FnOnce(&Broker) -> Result<Response, E> + Send + 'static,
    ) -> Response {
        match tokio::task::spawn_blocking(move || f(&self)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => e.into().0,
            Err(e) => Response::error(ErrorCode::StorageError, format!("store task failed: {e}")),
        }
    }

    /// Resolves a position to an offset in the partition.
    pub async fn resolve(
        &self,
        topic: &str,
        partition: u32,
        position: Position,
    ) -> Result<u64, Response> {
        let (t, this) = (topic.to_owned(), self.clone());
        let result = tokio::task::spawn_blocking(move || -> Result<u64, Response> {
            let o = this
                .offsets(&t, partition)
                .map_err(|e| Failure::from(e).0)?;
            Ok(match position {
                Position::Earliest => o.log_start,
                Position::Latest => o.log_end,
                Position::Offset(n) if n > o.log_end => {
                    return Err(Response::error(
                        ErrorCode::OffsetOutOfRange,
                        format!("offset {n} is past the log end {}", o.log_end),
                    ));
                }
                Position::Offset(n) => n.max(o.log_start),
                Position::Timestamp(ts) => this
                    .store
                    .offset_for_timestamp(&t, partition, ts)
                    .map_err(|e| Failure::from(e).0)?
                    .min(o.log_end),
            })
        })
        .await;
        result.unwrap_or_else(|e| Err(Response::error(ErrorCode::StorageError, e.to_string())))
    }

    /// The partition's high watermark: the end of the log as readers see
    /// it. 0 for a partition that does not exist (a read of it fails).
    pub fn high_watermark(&self, topic: &str, partition: u32) -> u64 {
        self.writer.high_watermark(topic, partition).unwrap_or(0)
    }

    /// The partition's log start and end as readers see them: the end is
    /// the high watermark. Blocks on a read transaction.
    pub fn offsets(&self, topic: &str, partition: u32) -> Result<PartitionOffsets, ReadError> {
        let upper = self.high_watermark(topic, partition);
        Ok(self.store.offsets(topic, partition)?.bounded(upper))
    }

    /// Reads batches from a resolved position.
    pub async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: Position,
        max_bytes: u32,
    ) -> Result<ReadBatches, Response> {
        let offset = self.resolve(topic, partition, from).await?;
        self.read_at(topic, partition, offset, max_bytes).await
    }

    /// Reads batches from an absolute offset.
    pub async fn read_at(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
    ) -> Result<ReadBatches, Response> {
        let max_bytes = max_bytes.clamp(1, self.limits.max_fetch_bytes) as usize;
        let upper = self.high_watermark(topic, partition);
        let (t, store) = (topic.to_owned(), self.store.clone());
        tokio::task::spawn_blocking(move || store.read(&t, partition, offset, max_bytes, upper))
            .await
            .map_err(|e| Response::error(ErrorCode::StorageError, e.to_string()))?
            .map_err(|e| Failure::from(e).0)
    }
}

/// A `Fetched` response holding every batch of a read.
pub fn fetched(read: ReadBatches) -> Response {
    let len = read.batches.iter().map(Bytes::len).sum();
    let mut buf = BytesMut::with_capacity(len);
    for b in &read.batches {
        buf.extend_from_slice(b);
    }
    let next_offset = read
        .batches
        .last()
        .and_then(|b| BatchHeader::parse(b).ok())
        .map_or(read.offsets.log_end, |h| h.next_offset());
    Response::Fetched {
        log_start: read.offsets.log_start,
        log_end: read.offsets.log_end,
        next_offset,
        batches: buf.freeze(),
    }
}

fn unknown_topic(name: &str) -> Response {
    Response::error(ErrorCode::UnknownTopic, format!("unknown topic {name:?}"))
}

/// An error already turned into its wire response.
pub struct Failure(pub Response);

impl From<TopicError> for Failure {
    fn from(e: TopicError) -> Self {
        let code = match &e {
            TopicError::Exists(_) => ErrorCode::TopicExists,
            TopicError::NotFound(_) => ErrorCode::UnknownTopic,
            TopicError::Invalid(_) => ErrorCode::InvalidTopicConfig,
            _ => ErrorCode::StorageError,
        };
        Failure(Response::error(code, e.to_string()))
    }
}

impl From<ReadError> for Failure {
    fn from(e: ReadError) -> Self {
        let code = match &e {
            ReadError::UnknownTopic(_) => ErrorCode::UnknownTopic,
            ReadError::UnknownPartition { .. } => ErrorCode::UnknownPartition,
            _ => ErrorCode::StorageError,
        };
        Failure(Response::error(code, e.to_string()))
    }
}

impl From<AppendFailure> for Failure {
    fn from(e: AppendFailure) -> Self {
        let code = match &e {
            AppendFailure::UnknownTopic(_) => ErrorCode::UnknownTopic,
            AppendFailure::UnknownPartition { .. } => ErrorCode::UnknownPartition,
            AppendFailure::Refused(refused) => match refused {
                AppendRefused::ProducerFenced { .. } => ErrorCode::ProducerFenced,
                AppendRefused::OutOfOrderSequence { .. } => ErrorCode::OutOfOrderSequence,
                AppendRefused::StaleDuplicate { .. } => ErrorCode::DuplicateSequence,
                _ => ErrorCode::InvalidRequest,
            },
            AppendFailure::Stopped => ErrorCode::ShuttingDown,
            _ => ErrorCode::StorageError,
        };
        Failure(Response::error(code, e.to_string()))
    }
}

/// The batch as the topic stores it: a batch that arrives uncompressed on a
/// topic with a codec is compressed with it (on the blocking pool: it is
/// CPU work), keeping its producer stamp and records; any other batch is
/// stored as it came.
async fn compress_for(spec: &TopicSpec, batch: Bytes) -> Result<Bytes, Response> {
    let codec = spec.compression;
    let header = BatchHeader::parse(&batch)
        .map_err(|e| Response::error(ErrorCode::CorruptBatch, e.to_string()))?;
    if codec == Compression::None || header.attributes.compression() != Compression::None {
        return Ok(batch);
    }
    tokio::task::spawn_blocking(move || {
        let records = batch::records(&batch)
            .map_err(|e| Response::error(ErrorCode::CorruptBatch, e.to_string()))?;
        let mut builder = BatchBuilder::with_capacity(batch.len());
        for r in records {
            builder.push(&Record {
                key: r.key,
                value: r.value,
                headers: r.headers,
                timestamp_ms: r.timestamp_ms,
            });
        }
        builder
            .finish_compressed(header.producer, codec)
            .map_err(|e| Response::error(ErrorCode::UnsupportedCompression, e.to_string()))
    })
    .await
    .map_err(|e| Response::error(ErrorCode::StorageError, format!("compression task: {e}")))?
}

/// The engine's ack level for a wire ack level.
pub fn ack_level(acks: Acks) -> AckLevel {
    match acks {
        Acks::None => AckLevel::None,
        Acks::Leader => AckLevel::Leader,
        Acks::Durable => AckLevel::Durable,
        Acks::All => AckLevel::All,
    }
}

/// All of a chain's output records as one batch, or `None` if there are none.
fn plugins_batches(records: &[Record]) -> Option<Bytes> {
    let mut all = batches(records, usize::MAX);
    debug_assert!(all.len() <= 1);
    all.pop()
}
