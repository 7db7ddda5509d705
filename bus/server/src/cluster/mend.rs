//! Mending the last in-sync replica's damaged batch (see
//! `edgebus_core::controller::Rebuild::mend`): with no leader to copy from,
//! the node asks the other replicas for the batch they store at the same
//! offset and epoch, which is the same batch, checks the copy, and writes
//! it over its own.

use edgebus_core::controller::NodeId;
use edgebus_proto::batch::{self, BatchHeader};
use edgebus_store::ReadError;

use super::Cluster;
use super::data::FETCH_TIMEOUT;
use super::peer::{PeerRequest, PeerResponse, Trailer};
use crate::writer::MendSource;

impl Cluster {
    /// Asks `sources` in turn for their batch at `offset` and
    /// `leader_epoch`, and hands the first whole copy (or none) to the
    /// writer, which stores it and tells the replica.
    pub(super) async fn mend(
        &self,
        topic: String,
        partition: u32,
        offset: u64,
        leader_epoch: i32,
        sources: Vec<NodeId>,
    ) {
        let Some(data) = self.data() else {
            return;
        };
        let store = data.store.clone();
        let name = topic.clone();
        let log_start = tokio::task::spawn_blocking(move || {
            store.offsets(&name, partition).map(|o| o.log_start)
        })
        .await;
        if let Ok(Ok(log_start)) = log_start
            && log_start > offset
        {
            // Retention deleted the damaged batch: the writer reports the
            // copy whole without asking anyone.
            data.writer
                .mend_copy(topic, partition, offset, MendSource::Unreached)
                .await;
            return;
        }
        let call = PeerRequest::MendBatch {
            topic: topic.clone(),
            partition,
            offset,
            leader_epoch,
        };
        let mut copy = None;
        let mut unreached = false;
        for source in sources {
            let answer = self
                .inner
                .peers
                .call_with_trailer(source, &call, FETCH_TIMEOUT)
                .await;
            match answer {
                Ok((PeerResponse::MendCopy(true), bytes)) => {
                    match check_copy(&bytes, offset, leader_epoch) {
                        Ok(()) => {
                            tracing::warn!(%topic, partition, offset, source, "mending a damaged batch with another replica's copy");
                            copy = Some(bytes);
                            break;
                        }
                        Err(e) => {
                            tracing::error!(%topic, partition, offset, source, error = %e, "copy for a mend refused");
                        }
                    }
                }
                Ok((PeerResponse::MendCopy(false), _)) => {
                    tracing::info!(%topic, partition, offset, source, "no whole copy there to mend from");
                }
                Ok((other, _)) => {
                    unreached = true;
                    tracing::info!(%topic, partition, offset, source, ?other, "mend not served");
                }
                Err(e) => {
                    unreached = true;
                    tracing::info!(%topic, partition, offset, source, error = %e, "mend not served");
                }
            }
        }
        let source = match copy {
            Some(copy) => MendSource::Copy(copy),
            None if unreached => MendSource::Unreached,
            None => {
                tracing::error!(%topic, partition, offset, "no other replica holds this batch whole; the partition stays without a leader until one does (asked again every second), unless the topic allows unclean elections");
                MendSource::Nowhere
            }
        };
        data.writer
            .mend_copy(topic, partition, offset, source)
            .await;
    }

    /// Serves another replica's mend: this node's batch at `offset`, if it
    /// has one stamped `leader_epoch` that passes its CRC (the answer's
    /// trailer), else `MendCopy(false)`.
    pub(super) async fn serve_mend(
        &self,
        topic: String,
        partition: u32,
        offset: u64,
        leader_epoch: i32,
    ) -> (PeerResponse, Trailer) {
        let none = (PeerResponse::MendCopy(false), Vec::new());
        let Some(data) = self.data() else {
            return none;
        };
        let store = data.store.clone();
        let name = topic.clone();
        // One byte asks for exactly one batch: the one holding `offset`.
        let read =
            tokio::task::spawn_blocking(move || store.read(&name, partition, offset, 1, u64::MAX))
                .await;
        let batch = match read {
            Ok(Ok(read)) => read.batches.into_iter().next(),
            Ok(Err(ReadError::DamagedBatch { offset: at, .. })) => {
                data.writer.damaged(topic, partition, at).await;
                None
            }
            Ok(Err(_)) | Err(_) => None,
        };
        match batch {
            Some(batch) if check_copy(&batch, offset, leader_epoch).is_ok() => {
                (PeerResponse::MendCopy(true), vec![batch])
            }
            _ => none,
        }
    }
}

/// Whether `bytes` is one whole batch starting at `offset`, stamped
/// `leader_epoch`, passing its CRC.
fn check_copy(bytes: &[u8], offset: u64, leader_epoch: i32) -> Result<(), String> {
    let header: BatchHeader = batch::verify_crc(bytes).map_err(|e| e.to_string())?;
    if header.base_offset != offset || header.partition_leader_epoch != leader_epoch {
        return Err(format!(
            "batch at {} in epoch {}, asked for {offset} in epoch {leader_epoch}",
            header.base_offset, header.partition_leader_epoch
        ));
    }
    if header.total_len() != bytes.len() {
        return Err(format!(
            "{} bytes, its header says {}",
            bytes.len(),
            header.total_len()
        ));
    }
    Ok(())
}
