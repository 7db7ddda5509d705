//! The scrub: reads this node's copy of every partition it holds, end to
//! end, at a bounded rate, so a batch that rotted on disk is found even if
//! no consumer or follower asks for it, before this copy could be elected.
//! The store checks every batch's CRC as it reads; a damaged one is
//! reported like one met by any other read (see [`Writer::damaged`]), so
//! the copy leaves the ISR and is rebuilt from the leader.
//!
//! [`Writer::damaged`]: crate::writer::Writer::damaged

use std::time::Duration;

use edgebus_proto::batch::BatchHeader;
use edgebus_store::ReadError;

use super::Cluster;

/// Bytes read per store call: small enough that a scrub never holds a
/// blocking thread long or competes with producers for the store.
const CHUNK_BYTES: usize = 1 << 20;

/// The first pass after a start waits this long at most: a node that comes
/// back from a power cut or a disk swap checks its copies early.
const FIRST_PASS_WITHIN: Duration = Duration::from_secs(60);

/// How often and how fast to scrub (`cluster.scrub_interval_ms`,
/// `cluster.scrub_bytes_per_second`).
#[derive(Debug, Clone, Copy)]
pub struct Scrub {
    /// From the end of one pass to the start of the next.
    pub interval: Duration,
    /// Read rate bound.
    pub bytes_per_second: u64,
}

impl Cluster {
    /// Scrubs forever: one pass soon after the start, then one every
    /// `interval`.
    pub(super) async fn scrub(self, scrub: Scrub) {
        tokio::time::sleep(scrub.interval.min(FIRST_PASS_WITHIN)).await;
        loop {
            let damaged = self.scrub_pass(scrub).await;
            tracing::info!(damaged, "scrub pass done");
            tokio::time::sleep(scrub.interval).await;
        }
    }

    /// One pass over every local copy; returns how many partitions held a
    /// damaged batch.
    async fn scrub_pass(&self, scrub: Scrub) -> usize {
        let Some(data) = self.data() else {
            return 0;
        };
        let node = self.node();
        let state = self.state();
        let mut damaged = 0;
        for (topic, meta) in &state.topics {
            for (partition, p) in meta.partitions.iter().enumerate() {
                if !p.replicas.contains(&node) {
                    continue;
                }
                let partition = partition as u32;
                let mut from = 0;
                loop {
                    let store = data.store.clone();
                    let name = topic.clone();
                    let read = tokio::task::spawn_blocking(move || {
                        store.read(&name, partition, from, CHUNK_BYTES, u64::MAX)
                    })
                    .await;
                    let batches = match read {
                        Ok(Ok(read)) => read.batches,
                        Ok(Err(ReadError::DamagedBatch { offset, .. })) => {
                            damaged += 1;
                            data.writer.damaged(topic.clone(), partition, offset).await;
                            break;
                        }
                        // Deleted meanwhile, or a store error the writer
                        // reports on its own path: the next pass tries again.
                        Ok(Err(_)) | Err(_) => break,
                    };
                    let Some(next) = batches
                        .last()
                        .and_then(|b| BatchHeader::parse(b).ok())
                        .map(|h| h.next_offset())
                    else {
                        break;
                    };
                    from = next;
                    let bytes: usize = batches.iter().map(|b| b.len()).sum();
                    let pause = bytes as f64 / scrub.bytes_per_second.max(1) as f64;
                    tokio::time::sleep(Duration::from_secs_f64(pause)).await;
                }
            }
        }
        damaged
    }
}
