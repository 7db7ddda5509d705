//! Writes: `InitProducer` and `Produce`, through the topic's ingest chain
//! when it has one.

use std::sync::Arc;

use bytes::Bytes;
use edgebus_core::partition::{AckLevel, AppendOutcome};
use edgebus_core::producer::SequenceSpan;
use edgebus_proto::batch::{
    self, BatchBuilder, BatchHeader, BatchInfo, Compression, Record, StoredRecord,
};
use edgebus_proto::frame::{Acks, RecordAcks, RecordFate, Response, TopicSpec};
use edgebus_proto::{CompressError, DecodeError, ErrorCode};
use edgebus_store::{LogStore, StoreError};
use tokio::sync::oneshot;

use crate::attach::{Attachments, IngestChain, IngestError};
use crate::chain::{self, ChainRun, OutputLimits};
use crate::dlq::{DeadLetterError, DeadLetters, dlq_topic};
use crate::error::Coded;
use crate::topics::{Topics, UnknownTopic};
use crate::writer::{Append, AppendFailure, AppendResult, Writer};

/// Why a produce was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProduceError {
    /// No such topic.
    #[error(transparent)]
    UnknownTopic(#[from] UnknownTopic),
    /// The topic has fewer partitions.
    #[error("topic {topic:?} has {partitions} partitions")]
    UnknownPartition {
        /// Topic name.
        topic: String,
        /// Its partition count.
        partitions: u32,
    },
    /// The batch failed validation (or uses a codec the broker lacks).
    #[error(transparent)]
    CorruptBatch(#[from] DecodeError),
    /// The batch is transactional or a control batch, which the broker does
    /// not support.
    #[error("transactional and control batches are not supported")]
    Transactional,
    /// The batch could not be compressed with the topic's codec.
    #[error(transparent)]
    Compress(#[from] CompressError),
    /// A record is over the topic's `max.message.bytes`.
    #[error("record of {size} bytes exceeds max.message.bytes {max} of topic {topic:?}")]
    RecordTooLarge {
        /// The record's size.
        size: usize,
        /// The topic's limit.
        max: u32,
        /// Topic name.
        topic: String,
    },
    /// The ingest chain refused the batch.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// The chain's dead letters could not be stored.
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
    /// The writer refused the append.
    #[error(transparent)]
    Write(#[from] AppendFailure),
    /// The writer is gone.
    #[error("writer stopped")]
    WriterStopped,
    /// A producer id could not be allocated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store call's task failed.
    #[error("store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Coded for ProduceError {
    fn code(&self) -> ErrorCode {
        match self {
            ProduceError::UnknownTopic(e) => e.code(),
            ProduceError::UnknownPartition { .. } => ErrorCode::UnknownPartition,
            ProduceError::CorruptBatch(DecodeError::UnsupportedCompression(_)) => {
                ErrorCode::UnsupportedCompression
            }
            ProduceError::CorruptBatch(_) => ErrorCode::CorruptBatch,
            ProduceError::Transactional => ErrorCode::InvalidRequest,
            ProduceError::Compress(_) => ErrorCode::UnsupportedCompression,
            ProduceError::RecordTooLarge { .. } => ErrorCode::RecordTooLarge,
            ProduceError::Ingest(e) => e.code(),
            ProduceError::DeadLetter(e) => e.code(),
            ProduceError::Write(e) => e.code(),
            ProduceError::WriterStopped => ErrorCode::ShuttingDown,
            ProduceError::Store(e) => e.code(),
            ProduceError::Task(_) => ErrorCode::StorageError,
        }
    }
}

/// A `Produce` request.
pub struct Produce {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// Acknowledgement level.
    pub acks: Acks,
    /// One encoded batch.
    pub batch: Bytes,
}

/// An accepted produce: the writer's answer once its commit is done, and
/// how to tell the producer where each record went.
pub struct Pending {
    ack: oneshot::Receiver<AppendResult>,
    plan: Plan,
}

/// What the ack says about each record, decided before the offsets are.
enum Plan {
    /// Stored as sent (or a retry of a batch that was).
    AsSent,
    /// A retry of a batch that went through an ingest chain.
    Unknown,
    /// One fate per input record, with offsets relative to the batch's
    /// base offset and to the first dead letter's.
    Each {
        fates: Vec<RecordFate>,
        dead_letters: Option<(String, oneshot::Receiver<u64>)>,
    },
}

impl Pending {
    fn new(ack: oneshot::Receiver<AppendResult>, plan: Plan) -> Pending {
        Pending { ack, plan }
    }
}

/// Producer ids a node hands out on its own, below its node id's prefix.
const NODE_PRODUCER_ID_BITS: u32 = 40;
/// The largest node id: the ids its node hands out stay below bit 62,
/// which pipeline producer ids set (see [`edgebus_core::sourced`]).
pub const MAX_NODE_ID: u64 = (1 << (62 - NODE_PRODUCER_ID_BITS)) - 1;

/// `InitProducer`: a new producer id for idempotent produce. A cluster
/// node puts its node id above the ids its store counts, so ids are unique
/// across the cluster: a producer that moves to another node after a
/// failover never meets another producer's dedup state.
pub async fn init_producer(
    store: &Arc<dyn LogStore>,
    node: Option<u64>,
) -> Result<Response, ProduceError> {
    let store = store.clone();
    let local = tokio::task::spawn_blocking(move || store.allocate_producer_id()).await??;
    let producer_id = match node {
        Some(node) => {
            ((node as i64) << NODE_PRODUCER_ID_BITS) | (local & ((1 << NODE_PRODUCER_ID_BITS) - 1))
        }
        None => local,
    };
    Ok(Response::ProducerInit {
        producer_id,
        producer_epoch: 0,
    })
}

/// `Produce`: validates the batch, runs the topic's ingest chain, and hands
/// the result to the writer. Errors found before the writer (unknown topic,
/// corrupt batch, oversized record, a refusing chain) come back at once.
pub async fn produce(
    topics: &Topics,
    attachments: &Attachments,
    writer: &Writer,
    dead_letters: &DeadLetters,
    p: Produce,
) -> Result<Pending, ProduceError> {
    let spec = topics.spec(&p.topic)?;
    if p.partition >= spec.partitions {
        return Err(ProduceError::UnknownPartition {
            topic: p.topic,
            partitions: spec.partitions,
        });
    }
    let BatchInfo {
        header,
        largest_record_bytes,
        ..
    } = batch::inspect(&p.batch)?;
    if header.attributes.is_transactional() || header.attributes.is_control() {
        return Err(ProduceError::Transactional);
    }
    if largest_record_bytes > spec.max_message_bytes as usize {
        return Err(ProduceError::RecordTooLarge {
            size: largest_record_bytes,
            max: spec.max_message_bytes,
            topic: p.topic,
        });
    }
    let sequence = header.producer.is_idempotent().then_some(SequenceSpan {
        producer: header.producer,
        record_count: header.record_count,
    });
    let target = Target {
        topic: p.topic.clone(),
        partition: p.partition,
        acks: ack_level(p.acks),
        sequence,
    };
    attachments.ingest_ready(&p.topic)?;
    if let Some(chain) = attachments.ingest_chain(&p.topic) {
        // The chain's state changes and dead letters are not undone by a
        // refusal, so a request to a node that does not lead the partition
        // is refused before the chain runs.
        if !writer.may_lead(&p.topic, p.partition) {
            return Err(AppendFailure::NotLeader { leader: None }.into());
        }
        return through_chain(&chain, &spec, writer, dead_letters, target, p.batch).await;
    }
    let batch = compress_for(&spec, p.batch).await?;
    let ack = writer
        .append(target.append(batch, header.record_count))
        .await;
    Ok(Pending::new(ack, Plan::AsSent))
}

/// Where a produce goes and how it is acknowledged.
struct Target {
    topic: String,
    partition: u32,
    acks: AckLevel,
    /// The producer's batch as sent, for deduplication.
    sequence: Option<SequenceSpan>,
}

impl Target {
    /// The append of `batch` (empty: none) holding `record_count` records.
    fn append(&self, batch: Bytes, record_count: u32) -> Append {
        Append {
            topic: self.topic.clone(),
            partition: self.partition,
            batch,
            record_count,
            sequence: self.sequence,
            acks: self.acks,
            dead_letters: None,
            state: None,
        }
    }
}

/// Runs the topic's ingest chain, then appends what it produced, with its
/// dead letters in the same transaction. An idempotent producer's sequence
/// advances by its original batch even when the chain drops, rewrites or
/// rejects records, so its next batch is still in order and a retry is
/// still recognised.
async fn through_chain(
    chain: &IngestChain,
    spec: &TopicSpec,
    writer: &Writer,
    dead_letters: &DeadLetters,
    target: Target,
    batch: Bytes,
) -> Result<Pending, ProduceError> {
    // A retry of a batch already stored is answered by the partition
    // engine from its dedup state, without running the chain again: its
    // dead letters and plugin state changes would otherwise happen twice.
    if let Some(span) = target.sequence
        && writer
            .duplicate_of(
                &target.topic,
                target.partition,
                span.producer,
                span.record_count,
            )
            .is_some()
    {
        let ack = writer.append(target.append(Bytes::new(), 0)).await;
        return Ok(Pending::new(ack, Plan::Unknown));
    }
    let records = batch::records(&batch)?;
    // Everything the chain makes is stored as one batch, which must be
    // one a consumer can fetch.
    let limits = OutputLimits {
        max_record_bytes: spec.max_message_bytes as usize,
        max_batch_bytes: chain::MAX_OUTPUT_BATCH_BYTES,
        overhead_per_input: 0,
    };
    let at = (target.topic.as_str(), target.partition);
    let appended = chain
        .run(writer, at, &records, limits, async |run| {
            let to = (&target, dead_letters);
            append_run(run, chain, spec, writer, to, &records, batch).await
        })
        .await;
    match appended {
        Ok(pending) => pending,
        Err(refused) => {
            // A final refusal is never retried, so the producer's next
            // batch follows it: advance the sequence past it. A retriable
            // one (halted, storage) will be resent with the same sequence
            // and must then be stored, not deduplicated.
            if target.sequence.is_some() && !refused.code().is_retriable() {
                let _ = writer.append(target.append(Bytes::new(), 0)).await.await;
            }
            Err(refused.into())
        }
    }
}

/// Appends what the ingest chain made of a batch, with its dead letters
/// and the chain's state changes in the same transaction.
async fn append_run(
    run: ChainRun,
    chain: &IngestChain,
    spec: &TopicSpec,
    writer: &Writer,
    (target, dead_letters): (&Target, &DeadLetters),
    records: &[StoredRecord],
    batch: Bytes,
) -> Result<Pending, ProduceError> {
    if run.unchanged {
        let record_count = BatchHeader::parse(&batch)?.record_count;
        let batch = compress_for(spec, batch).await?;
        let append = Append {
            state: chain.take_state(),
            ..target.append(batch, record_count)
        };
        let ack = writer.append(append).await;
        return Ok(Pending::new(ack, Plan::AsSent));
    }
    let fates = fates(records.len(), &run);
    let outputs: Vec<_> = run.outputs.into_iter().map(|(_, r)| r).collect();
    // One batch, so the outputs take contiguous offsets from one base, as
    // `fates` assumes; the chain kept them within MAX_OUTPUT_BATCH_BYTES.
    let mut all = chain::batches(&outputs, usize::MAX);
    debug_assert!(all.len() <= 1, "one batch holds every output");
    let mut append = match all.pop() {
        Some(b) => {
            let record_count = BatchHeader::parse(&b)?.record_count;
            target.append(compress_for(spec, b).await?, record_count)
        }
        None => target.append(Bytes::new(), 0),
    };
    let mut placed = None;
    if !run.dead_letters.is_empty() {
        if dead_letters.apart() {
            let first = dead_letters
                .store_apart(&target.topic, &run.dead_letters)
                .await?;
            let (tx, at) = oneshot::channel();
            if let Some(first) = first {
                let _ = tx.send(first);
            }
            placed = Some((dlq_topic(&target.topic), at));
        } else {
            let (letters, at) = dead_letters
                .prepare(&target.topic, &run.dead_letters)
                .await?;
            placed = Some((letters.topic.clone(), at));
            append.dead_letters = Some(letters);
        }
    }
    append.state = chain.take_state();
    let ack = writer.append(append).await;
    Ok(Pending::new(
        ack,
        Plan::Each {
            fates,
            dead_letters: placed,
        },
    ))
}

/// Each input's fate after the chain, with offsets relative to the first
/// stored output and the first dead letter. Outputs come in input order,
/// so an input's outputs are consecutive; an input that kept any output
/// counts as stored even if a later stage failed on another of its copies.
fn fates(inputs: usize, run: &ChainRun) -> Vec<RecordFate> {
    let mut fates = vec![RecordFate::Filtered; inputs];
    for (position, (input, _)) in run.outputs.iter().enumerate() {
        match &mut fates[*input] {
            RecordFate::Stored { count, .. } => *count += 1,
            fate => {
                *fate = RecordFate::Stored {
                    offset: position as u64,
                    count: 1,
                }
            }
        }
    }
    let dead_lettered = !run.dead_letters.is_empty();
    for (position, (input, reason)) in run.failures.iter().enumerate() {
        let fate = &mut fates[*input];
        if matches!(fate, RecordFate::Filtered) {
            *fate = if dead_lettered {
                RecordFate::DeadLettered {
                    offset: position as u64,
                }
            } else {
                RecordFate::Dropped {
                    reason: reason.clone(),
                }
            };
        }
    }
    fates
}

/// The batch as the topic stores it: a batch that arrives uncompressed on a
/// topic with a codec is compressed with it (on the blocking pool: it is
/// CPU work), keeping its producer stamp, timestamps, keys and headers;
/// any other batch is stored as it came.
async fn compress_for(spec: &TopicSpec, batch: Bytes) -> Result<Bytes, ProduceError> {
    let codec = spec.compression;
    let header = BatchHeader::parse(&batch)?;
    if codec == Compression::None || header.attributes.compression() != Compression::None {
        return Ok(batch);
    }
    tokio::task::spawn_blocking(move || {
        let mut builder = BatchBuilder::with_capacity(batch.len());
        for r in batch::records(&batch)? {
            builder.push(&Record {
                key: r.key,
                value: r.value,
                headers: r.headers,
                timestamp_ms: r.timestamp_ms,
            });
        }
        Ok(builder.finish_compressed(header.producer, codec)?)
    })
    .await?
}

/// The partition engine's ack level for a wire ack level.
pub fn ack_level(acks: Acks) -> AckLevel {
    match acks {
        Acks::None => AckLevel::None,
        Acks::Leader => AckLevel::Leader,
        Acks::Durable => AckLevel::Durable,
        Acks::All => AckLevel::All,
    }
}

/// The answer to a produce once the writer has committed it.
pub async fn acknowledged(pending: Pending) -> Result<Response, ProduceError> {
    let outcome = match pending.ack.await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => return Err(ProduceError::WriterStopped),
    };
    let base_offset = outcome.base_offset();
    let duplicate = matches!(outcome, AppendOutcome::Duplicate { .. });
    let records = match pending.plan {
        Plan::AsSent => RecordAcks::AsSent,
        Plan::Unknown => RecordAcks::Unknown,
        // A retry found by the writer rather than before the chain ran:
        // this run's fates are not the stored batch's.
        Plan::Each { .. } if duplicate => RecordAcks::Unknown,
        Plan::Each {
            mut fates,
            dead_letters,
        } => {
            // Dead letters are placed before the batch they came from is
            // acked; only a dead-letter topic deleted in between leaves
            // them unplaced.
            let (dead_letter_topic, first_letter) = match dead_letters {
                Some((topic, mut at)) => (topic, at.try_recv().ok()),
                None => (String::new(), None),
            };
            for fate in &mut fates {
                match fate {
                    RecordFate::Stored { offset, .. } => *offset += base_offset,
                    RecordFate::DeadLettered { offset } => match first_letter {
                        Some(first) => *offset += first,
                        None => {
                            *fate = RecordFate::Dropped {
                                reason: format!(
                                    "dead-letter topic {dead_letter_topic:?} was deleted"
                                ),
                            }
                        }
                    },
                    RecordFate::Filtered | RecordFate::Dropped { .. } => {}
                }
            }
            RecordAcks::Each {
                dead_letter_topic,
                fates,
            }
        }
    };
    Ok(Response::Produced {
        base_offset,
        duplicate,
        records,
    })
}
