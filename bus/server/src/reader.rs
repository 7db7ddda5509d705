//! Reads of partition logs, run off the async workers: positions resolved
//! to offsets, batches read under the broker's fetch limit.

use std::sync::Arc;

use bytes::Bytes;
use edgebus_proto::ErrorCode;
use edgebus_proto::batch::BatchHeader;
use edgebus_proto::frame::{PartitionInfo, Position, TopicSpec};
use edgebus_store::{LogStore, PartitionOffsets, ReadBatches, ReadError};

use crate::error::Coded;
use crate::metrics::Metrics;
use crate::writer::Writer;

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
    /// A stored batch is too large for any frame a client reads (older
    /// data, stored before plugin output was bounded): sending it would
    /// fail the client's read, and a retry would meet it again.
    #[error(
        "the batch stored at offset {offset} is {size} bytes, more than the \
         {max}-byte frame limit: it cannot be served"
    )]
    BatchTooLarge {
        /// Its base offset.
        offset: u64,
        /// Its size.
        size: usize,
        /// The largest batch a frame carries.
        max: usize,
    },
}

/// The largest stored batch a fetch or subscription frame can carry: the
/// default frame limit of clients less room for the frame's head.
const MAX_SERVED_BATCH_BYTES: usize =
    edgebus_proto::limits::DEFAULT_MAX_FRAME_BYTES as usize - 1024;

/// The first batch of `batches` too large to serve, as an error.
pub fn unservable(batches: &[Bytes]) -> Option<FetchError> {
    batches
        .iter()
        .find(|b| b.len() > MAX_SERVED_BATCH_BYTES)
        .map(|b| FetchError::BatchTooLarge {
            offset: BatchHeader::parse(b).map_or(0, |h| h.base_offset),
            size: b.len(),
            max: MAX_SERVED_BATCH_BYTES,
        })
}

impl Coded for FetchError {
    fn code(&self) -> ErrorCode {
        match self {
            FetchError::Store(e) => e.code(),
            FetchError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            FetchError::Task(_) => ErrorCode::StorageError,
            FetchError::BatchTooLarge { .. } => ErrorCode::RecordTooLarge,
        }
    }
}

/// A handle for reading partitions. Cheap to clone.
///
/// Every read is bounded by the partition's high watermark, which the
/// writer's partition engines publish: a reader never sees a record that
/// is not yet committed at the level the engine promises readers (on a
/// single node, fsync'd), so a record once read is never lost or changed.
#[derive(Clone)]
pub struct Reader {
    store: Arc<dyn LogStore>,
    writer: Writer,
    max_fetch_bytes: u32,
    metrics: Arc<Metrics>,
}

impl Reader {
    /// Reads from `store` below the high watermarks of `writer`, never more
    /// than `max_fetch_bytes` at once, counting what it reads in `metrics`.
    pub fn new(
        store: Arc<dyn LogStore>,
        writer: Writer,
        max_fetch_bytes: u32,
        metrics: Arc<Metrics>,
    ) -> Reader {
        Reader {
            store,
            writer,
            max_fetch_bytes,
            metrics,
        }
    }

    /// The partition's high watermark: the end of its log as readers see
    /// it. 0 for a partition that does not exist (reading it fails).
    pub fn high_watermark(&self, topic: &str, partition: u32) -> u64 {
        self.writer.high_watermark(topic, partition).unwrap_or(0)
    }

    /// Runs a store read on the blocking pool, with the reader's bound.
    async fn blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Bounded<'_>) -> Result<T, FetchError> + Send + 'static,
    ) -> Result<T, FetchError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            read(&Bounded {
                store: &*this.store,
                reader: &this,
            })
        })
        .await?
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
            let timestamp = |ts| -> Result<u64, FetchError> {
                Ok(store
                    .store
                    .offset_for_timestamp(&topic, partition, ts)?
                    .min(o.log_end))
            };
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
                Position::Timestamp(ts) => timestamp(ts)?,
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
        let name = topic.to_owned();
        let read = self
            .blocking(move |store| {
                let topic = name;
                let upper = store.reader.high_watermark(&topic, partition);
                let read = store
                    .store
                    .read(&topic, partition, offset, max_bytes, upper)?;
                store
                    .reader
                    .metrics
                    .traffic
                    .read(&topic, partition, &read.batches);
                Ok(read)
            })
            .await;
        if let Err(FetchError::Store(ReadError::DamagedBatch { offset, .. })) = &read {
            self.writer
                .damaged(topic.to_owned(), partition, *offset)
                .await;
        }
        read
    }

    /// The log start and end of every partition of a topic, and its size
    /// (which counts batches committed but not yet below the high
    /// watermark, for the few ms until they are).
    pub async fn partitions(&self, spec: TopicSpec) -> Result<Vec<PartitionInfo>, FetchError> {
        self.blocking(move |store| {
            (0..spec.partitions)
                .map(|partition| {
                    let o = store.offsets(&spec.name, partition)?;
                    Ok(PartitionInfo {
                        partition,
                        log_start: o.log_start,
                        log_end: o.log_end,
                        size_bytes: store.store.partition_bytes(&spec.name, partition)?,
                    })
                })
                .collect()
        })
        .await
    }
}

/// The store as a reader sees it, inside one blocking read.
struct Bounded<'a> {
    store: &'a dyn LogStore,
    reader: &'a Reader,
}

impl Bounded<'_> {
    /// The partition's log start and end, the end being its high watermark.
    fn offsets(&self, topic: &str, partition: u32) -> Result<PartitionOffsets, ReadError> {
        let upper = self.reader.high_watermark(topic, partition);
        Ok(self.store.offsets(topic, partition)?.bounded(upper))
    }
}
