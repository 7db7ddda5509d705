//! Reads of partition logs, run off the async workers: positions resolved
//! to offsets, batches read under the broker's fetch limit.

use std::sync::Arc;

use edgebus_proto::ErrorCode;
use edgebus_proto::batch::ProducerStamp;
use edgebus_proto::frame::{PartitionInfo, Position, TopicSpec};
use edgebus_store::{LogStore, ReadBatches, ReadError};

use crate::error::Coded;

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The store refused (unknown topic or partition, storage).
    #[error(transparent)]
    Store(#[from] ReadError),
    /// An absolute position past the end of the log.
    #[error("offset {offset} is past the log end {log_end}")]
    OffsetOutOfRange {
        /// The offset asked for.
        offset: u64,
        /// The partition's log end.
        log_end: u64,
    },
    /// The store call's task failed.
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
}

impl Coded for FetchError {
    fn code(&self) -> ErrorCode {
        match self {
            FetchError::Store(e) => e.code(),
            FetchError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            FetchError::Task(_) => ErrorCode::StorageError,
        }
    }
}

/// A handle for reading partitions. Cheap to clone.
#[derive(Clone)]
pub struct Reader {
    store: Arc<dyn LogStore>,
    max_fetch_bytes: u32,
}

impl Reader {
    /// Reads from `store`, never more than `max_fetch_bytes` at once.
    pub fn new(store: Arc<dyn LogStore>, max_fetch_bytes: u32) -> Reader {
        Reader {
            store,
            max_fetch_bytes,
        }
    }

    /// Runs a store read on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&dyn LogStore) -> Result<T, FetchError> + Send + 'static,
    ) -> Result<T, FetchError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || read(&*store)).await?
    }

    /// Resolves a position to an offset in the partition.
    pub async fn resolve(
        &self,
        topic: &str,
        partition: u32,
        position: Position,
    ) -> Result<u64, FetchError> {
        let topic = topic.to_owned();
        self.blocking(move |store| {
            let o = store.offsets(&topic, partition)?;
            Ok(match position {
                Position::Earliest => o.log_start,
                Position::Latest => o.log_end,
                Position::Offset(offset) if offset > o.log_end => {
                    return Err(FetchError::OffsetOutOfRange {
                        offset,
                        log_end: o.log_end,
                    });
                }
                Position::Offset(offset) => offset.max(o.log_start),
                Position::Timestamp(ts) => store.offset_for_timestamp(&topic, partition, ts)?,
            })
        })
        .await
    }

    /// Reads batches from a position.
    pub async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: Position,
        max_bytes: u32,
    ) -> Result<ReadBatches, FetchError> {
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
    ) -> Result<ReadBatches, FetchError> {
        let max_bytes = max_bytes.clamp(1, self.max_fetch_bytes) as usize;
        let topic = topic.to_owned();
        self.blocking(move |store| Ok(store.read(&topic, partition, offset, max_bytes)?))
            .await
    }

    /// The log start and end of every partition of a topic.
    pub async fn partitions(&self, spec: TopicSpec) -> Result<Vec<PartitionInfo>, FetchError> {
        self.blocking(move |store| {
            (0..spec.partitions)
                .map(|partition| {
                    let o = store.offsets(&spec.name, partition)?;
                    Ok(PartitionInfo {
                        partition,
                        log_start: o.log_start,
                        log_end: o.log_end,
                    })
                })
                .collect()
        })
        .await
    }

    /// The offset the next record of a partition will get.
    pub async fn log_end(&self, topic: &str, partition: u32) -> Result<u64, FetchError> {
        let topic = topic.to_owned();
        self.blocking(move |store| Ok(store.offsets(&topic, partition)?.log_end))
            .await
    }

    /// The base offset of a producer's batch, if the partition already
    /// stores it (a retry).
    pub async fn stored_batch(
        &self,
        topic: &str,
        partition: u32,
        producer: ProducerStamp,
        record_count: u32,
    ) -> Result<Option<u64>, FetchError> {
        let topic = topic.to_owned();
        self.blocking(move |store| {
            store
                .stored_batch(&topic, partition, producer, record_count)
                .map_err(|e| FetchError::Store(e.into()))
        })
        .await
    }
}
