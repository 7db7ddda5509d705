//! Dead letters on a cluster node: their topic is created through the
//! control log like any other, and each batch is appended on the topic's
//! leader (through this node's writer, or the leader's over the peer
//! connection) with `acks=all`. When they are stored, and what that
//! promises, is `crate::dlq`'s.

use std::time::{Duration, Instant};

use bytes::Bytes;
use edgebus_core::partition::AckLevel;
use edgebus_proto::ErrorCode;
use edgebus_proto::batch;
use edgebus_proto::frame::TopicSpec;
use futures::future::BoxFuture;

use super::Cluster;
use super::peer::{PeerRequest, PeerResponse};
use crate::dlq::{DeadLetterError, DeadLetterRoute, append_letters};
use crate::error::Coded;
use crate::topics::TopicAdminError;
use crate::writer::AppendFailure;

/// How long an append follows leader changes: long enough for a dead
/// leader's session to run out and a new one to be elected (the defaults
/// take 6–12 s).
const APPEND_DEADLINE: Duration = Duration::from_secs(20);

/// Longest one call to the leader waits for its answer (less when the
/// deadline is nearer), so a produce holding its topic's ingest chain
/// waits at most about [`APPEND_DEADLINE`].
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause before asking again after a retriable refusal.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

impl DeadLetterRoute for Cluster {
    fn create(&self, spec: TopicSpec) -> BoxFuture<'static, Result<(), TopicAdminError>> {
        let cluster = self.clone();
        Box::pin(async move { cluster.create_topic(spec, 0, 0, false).await })
    }

    fn append(
        &self,
        topic: String,
        batch: Bytes,
        record_count: u32,
    ) -> BoxFuture<'static, Result<u64, DeadLetterError>> {
        let cluster = self.clone();
        Box::pin(async move { cluster.append_on_leader(topic, batch, record_count).await })
    }
}

impl Cluster {
    /// Appends a dead-letter batch on its topic's leader, asking again
    /// after retriable refusals (no leader yet, a leader change, too few
    /// in-sync replicas) until [`APPEND_DEADLINE`].
    async fn append_on_leader(
        &self,
        topic: String,
        batch: Bytes,
        record_count: u32,
    ) -> Result<u64, DeadLetterError> {
        let deadline = Instant::now() + APPEND_DEADLINE;
        loop {
            let leader = self
                .state()
                .topics
                .get(&topic)
                .and_then(|t| t.partitions.first())
                .and_then(|p| p.leader);
            let tried = match leader {
                Some(node) if node == self.node() => self
                    .append_here(topic.clone(), batch.clone(), record_count)
                    .await
                    .map_err(DeadLetterError::from),
                Some(node) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let call = CALL_TIMEOUT.min(left.max(RETRY_PAUSE));
                    self.append_at(node, &topic, (&batch, record_count), call)
                        .await
                }
                None => Err(DeadLetterError::Write(AppendFailure::NotLeader {
                    leader: None,
                })),
            };
            match tried {
                Err(e) if e.code().is_retriable() && Instant::now() < deadline => {
                    tracing::debug!(%topic, error = %e, "dead letters not stored yet; asking again");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                done => return done,
            }
        }
    }

    /// Sends a dead-letter batch to `node`, which this node takes for the
    /// topic's leader.
    async fn append_at(
        &self,
        node: u64,
        topic: &str,
        (batch, record_count): (&Bytes, u32),
        timeout: Duration,
    ) -> Result<u64, DeadLetterError> {
        let call = PeerRequest::AppendDeadLetters {
            topic: topic.to_owned(),
            batch: batch.to_vec(),
            record_count,
        };
        let remote = |code, detail| DeadLetterError::Remote { node, code, detail };
        match self.inner.peers.call(node, &call, timeout).await {
            Ok(PeerResponse::DeadLettersAppended(Ok(base_offset))) => Ok(base_offset),
            Ok(PeerResponse::DeadLettersAppended(Err((code, detail)))) => Err(remote(
                ErrorCode::from_u16(code).unwrap_or(ErrorCode::StorageError),
                detail,
            )),
            Ok(other) => Err(remote(
                ErrorCode::StorageError,
                format!("unexpected answer {other:?}"),
            )),
            Err(e) => Err(remote(ErrorCode::NotLeader, e.to_string())),
        }
    }

    /// Appends a dead-letter batch here with `acks=all`, if this node
    /// leads its topic. Only dead-letter topics are written this way: a
    /// peer's call must not bypass a topic's ingest chain.
    pub(super) async fn append_here(
        &self,
        topic: String,
        batch: Bytes,
        record_count: u32,
    ) -> Result<u64, AppendFailure> {
        if !topic.ends_with(".dlq") {
            return Err(AppendFailure::Storage(format!(
                "{topic:?} is not a dead-letter topic"
            )));
        }
        let header = batch::validate(&batch).map_err(|e| AppendFailure::Storage(e.to_string()))?;
        if header.record_count != record_count {
            return Err(AppendFailure::Storage(format!(
                "a batch of {} records sent as {record_count}",
                header.record_count
            )));
        }
        let Some(data) = self.data() else {
            return Err(AppendFailure::NotLeader { leader: None });
        };
        append_letters(&data.writer, topic, (batch, record_count), AckLevel::All).await
    }
}
