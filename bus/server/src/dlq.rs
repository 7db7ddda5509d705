//! Dead-letter topics: `<topic>.dlq` holds the records a plugin failed on
//! under the `dead-letter` policy, created on first use.

use edgebus_proto::batch::Record;
use edgebus_proto::frame::TopicSpec;
use edgebus_proto::{DecodeError, ErrorCode};
use edgebus_store::TopicError;

use crate::chain;
use crate::error::Coded;
use crate::topics::{TopicAdminError, Topics};
use crate::writer::{WriteError, Writer};

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
    Write(#[from] WriteError),
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
            };
            match self.topics.create(spec).await {
                Ok(()) | Err(TopicAdminError::Store(TopicError::Exists(_))) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(dlq)
    }

    /// Writes dead letters to `<topic>.dlq` and waits for the commit: a
    /// failed record is never acknowledged as handled before its dead
    /// letter is stored.
    pub async fn append(
        &self,
        topic: &str,
        letters: &[Record],
        durable: bool,
    ) -> Result<(), DeadLetterError> {
        let dlq = self.ensure(topic).await?;
        for append in chain::appends(&dlq, 0, letters)? {
            match self.writer.append(append, durable).await.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(DeadLetterError::WriterStopped),
            }
        }
        Ok(())
    }
}
