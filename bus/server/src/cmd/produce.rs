//! Writes: `InitProducer` and `Produce`, through the topic's ingest chain
//! when it has one.

use std::sync::Arc;

use bytes::Bytes;
use edgebus_proto::batch::{self, BatchHeader};
use edgebus_proto::frame::{Acks, Response};
use edgebus_proto::{DecodeError, ErrorCode};
use edgebus_store::{Append, AppendOutcome, LogStore, SequenceSpan, StoreError};
use tokio::sync::oneshot;

use crate::attach::{Attachments, IngestChain, IngestError};
use crate::chain;
use crate::dlq::{DeadLetterError, DeadLetters};
use crate::error::Coded;
use crate::reader::{FetchError, Reader};
use crate::topics::{Topics, UnknownTopic};
use crate::writer::{AppendResult, WriteError, Writer};

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
    /// The batch failed validation.
    #[error(transparent)]
    CorruptBatch(#[from] DecodeError),
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
    /// Reading the dedup state or the log end failed.
    #[error(transparent)]
    Read(#[from] FetchError),
    /// The ingest chain refused the batch.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// The chain's dead letters could not be stored.
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
    /// The store refused the append.
    #[error(transparent)]
    Write(#[from] WriteError),
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
            ProduceError::CorruptBatch(_) => ErrorCode::CorruptBatch,
            ProduceError::RecordTooLarge { .. } => ErrorCode::RecordTooLarge,
            ProduceError::Read(e) => e.code(),
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

/// The writer's answer to an accepted produce, once its commit is done.
pub type Pending = oneshot::Receiver<AppendResult>;

/// `InitProducer`: a new producer id for idempotent produce.
pub async fn init_producer(store: &Arc<dyn LogStore>) -> Result<Response, ProduceError> {
    let store = store.clone();
    let producer_id = tokio::task::spawn_blocking(move || store.allocate_producer_id()).await??;
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
    reader: &Reader,
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
    let (header, largest) = batch::inspect(&p.batch)?;
    if largest > spec.max_message_bytes as usize {
        return Err(ProduceError::RecordTooLarge {
            size: largest,
            max: spec.max_message_bytes,
            topic: p.topic,
        });
    }
    if let Some(chain) = attachments.ingest_chain(&p.topic) {
        return through_chain(&chain, reader, writer, dead_letters, p, header).await;
    }
    let durable = p.acks == Acks::Durable;
    let append = Append {
        topic: p.topic,
        partition: p.partition,
        batch: p.batch,
        header,
        sequence: None,
    };
    Ok(writer.append(append, durable).await)
}

/// An answer that needs no writer.
fn answered(outcome: AppendOutcome) -> Pending {
    let (tx, rx) = oneshot::channel();
    let _ = tx.send(Ok(outcome));
    rx
}

/// Runs the topic's ingest chain, then appends what it produced. An
/// idempotent producer's sequence advances by its original batch even when
/// the chain drops, rewrites or rejects records, so its next batch is still
/// in order and a retry is still recognised.
async fn through_chain(
    chain: &IngestChain,
    reader: &Reader,
    writer: &Writer,
    dead_letters: &DeadLetters,
    p: Produce,
    header: BatchHeader,
) -> Result<Pending, ProduceError> {
    let durable = p.acks == Acks::Durable;
    let idempotent = header.producer.is_idempotent();
    // A retry of a batch already stored is answered from the dedup state,
    // without running the chain again: its dead letters and plugin state
    // changes would otherwise happen twice.
    if idempotent {
        let stored = reader
            .stored_batch(&p.topic, p.partition, header.producer, header.record_count)
            .await?;
        if let Some(base_offset) = stored {
            return Ok(answered(AppendOutcome::Duplicate { base_offset }));
        }
    }
    let records = batch::records(&p.batch)?;
    let sequence = idempotent.then_some(SequenceSpan {
        producer: header.producer,
        record_count: header.record_count,
    });
    let run = match chain.run(&p.topic, p.partition, &records).await {
        Ok(run) => run,
        Err(refused) => {
            // A final refusal is never retried, so the producer's next
            // batch follows it: advance the sequence past it. A retriable
            // one (halted, storage) will be resent with the same sequence
            // and must then be stored, not deduplicated.
            if sequence.is_some() && !refused.code().is_retriable() {
                let skip = Append {
                    topic: p.topic,
                    partition: p.partition,
                    batch: Bytes::new(),
                    header,
                    sequence,
                };
                let _ = writer.append(skip, durable).await.await;
            }
            return Err(refused.into());
        }
    };
    if run.unchanged {
        let append = Append {
            topic: p.topic,
            partition: p.partition,
            batch: p.batch,
            header,
            sequence: None,
        };
        return Ok(writer.append(append, durable).await);
    }
    if !run.dead_letters.is_empty() {
        dead_letters
            .append(&p.topic, &run.dead_letters, durable)
            .await?;
    }
    let outputs: Vec<_> = run
        .outputs
        .into_iter()
        .map(|(_, r)| chain::from_plugin(r))
        .collect();
    let mut all = chain::batches(&outputs, usize::MAX);
    debug_assert!(all.len() <= 1, "one batch holds every output");
    let (batch, header) = match all.pop() {
        Some(b) => {
            let h = BatchHeader::parse(&b)?;
            (b, h)
        }
        None if sequence.is_some() => (Bytes::new(), header),
        None => {
            // Nothing to store and no sequence to advance: acknowledge at
            // the current log end.
            let end = reader.log_end(&p.topic, p.partition).await?;
            return Ok(answered(AppendOutcome::Appended { base_offset: end }));
        }
    };
    let append = Append {
        topic: p.topic,
        partition: p.partition,
        batch,
        header,
        sequence,
    };
    Ok(writer.append(append, durable).await)
}

/// The answer to a produce once the writer has committed it.
pub async fn acknowledged(pending: Pending) -> Result<Response, ProduceError> {
    match pending.await {
        Ok(Ok(outcome)) => Ok(Response::Produced {
            base_offset: outcome.base_offset(),
            duplicate: matches!(outcome, AppendOutcome::Duplicate { .. }),
        }),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ProduceError::WriterStopped),
    }
}
