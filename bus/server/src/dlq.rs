//! Dead-letter topics: `<topic>.dlq` holds the records a plugin failed on
//! under the `dead-letter` policy, created on first use.

use edgebus_core::partition::AckLevel;
use edgebus_proto::batch::{Compression, Record};
use edgebus_proto::frame::TopicSpec;
use edgebus_proto::{DecodeError, ErrorCode};
use edgebus_store::TopicError;

use crate::chain;
use crate::error::Coded;
use crate::topics::{TopicAdminError, Topics};
use crate::writer::{Append, AppendFailure, Writer};

/// Why dead letters were not stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeadLetterError {
    /// The dead-letter topic could not be created.
    #[error(transparent)]
    Topic(#[from] TopicAdminError),
    /// A dead-letter batch could not be encoded.
    #[error(transparent)]
    Batch(#[from] DecodeError),
    /// The writer refused the append.
    #[error(transparent)]
    Write(#[from] AppendFailure),
    /// The writer is gone.
    #[error("writer stopped")]
    WriterStopped,
}

impl Coded for DeadLetterError {
    fn code(&self) -> ErrorCode {
        match self {
            DeadLetterError::Topic(e) => e.code(),
            DeadLetterError::Batch(_) => ErrorCode::CorruptBatch,
            DeadLetterError::Write(e) => e.code(),
            DeadLetterError::WriterStopped => ErrorCode::ShuttingDown,
        }
    }
}

/// The dead-letter topic of `topic`.
pub fn dlq_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// Where failed records go. Cheap to clone.
#[derive(Clone)]
pub struct DeadLetters {
    topics: Topics,
    writer: Writer,
}

impl DeadLetters {
    /// Dead letters created in `topics` and written through `writer`.
    pub fn new(topics: Topics, writer: Writer) -> DeadLetters {
        DeadLetters { topics, writer }
    }

    /// The dead-letter topic of `topic`, created (one partition, kept
    /// forever) on first use.
    pub async fn ensure(&self, topic: &str) -> Result<String, TopicAdminError> {
        let dlq = dlq_topic(topic);
        if self.topics.spec(&dlq).is_err() {
            let spec = TopicSpec {
                name: dlq.clone(),
                partitions: 1,
                retention_ms: -1,
                retention_bytes: -1,
                max_message_bytes: 0,
                compression: Compression::None,
            };
            match self.topics.create(spec).await {
                Ok(()) | Err(TopicAdminError::Store(TopicError::Exists(_))) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(dlq)
    }

    /// Dead letters of `topic`, in batches of the default size, to be
    /// written with the batch they came from (see
    /// [`crate::writer::Append::dead_letters`]); creates the dead-letter
    /// topic on first use.
    pub async fn prepare(
        &self,
        topic: &str,
        letters: &[Record],
    ) -> Result<crate::writer::DeadLetters, DeadLetterError> {
        let dlq = self.ensure(topic).await?;
        let batches = chain::outputs(&dlq, 0, letters)?
            .into_iter()
            .map(|o| (o.batch, o.record_count))
            .collect();
        Ok(crate::writer::DeadLetters {
            topic: dlq,
            batches,
        })
    }

    /// Writes dead letters to `<topic>.dlq` on their own and waits for the
    /// commit: a failed record is never acknowledged as handled before its
    /// dead letter is stored.
    pub async fn append(
        &self,
        topic: &str,
        letters: &[Record],
        acks: AckLevel,
    ) -> Result<(), DeadLetterError> {
        let dlq = self.ensure(topic).await?;
        for output in chain::outputs(&dlq, 0, letters)? {
            let append = Append {
                topic: output.topic,
                partition: output.partition,
                batch: output.batch,
                record_count: output.record_count,
                sequence: None,
                acks,
                dead_letters: None,
            };
            match self.writer.append(append).await.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(DeadLetterError::WriterStopped),
            }
        }
        Ok(())
    }
}
