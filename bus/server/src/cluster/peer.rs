//! Traffic between nodes: the control log's RPCs, proposals forwarded to
//! the control log's leader, and heartbeats, on QUIC connections with ALPN
//! `edgebus-peer/1` to the same listener clients use.
//!
//! Both ends authenticate: a node dials with its certificate from the
//! cluster CA and verifies the dialled node's certificate names it
//! ([`crate::tls::node_name`]); the listener requires a client certificate
//! on this ALPN, chained to the cluster CA alone (whatever CA client
//! certificates may come from) and naming the node the dialler says it is.
//!
//! Each call is one bidirectional stream: a request, then its response,
//! each a `u32` big-endian length and that many bytes of JSON; the response
//! is followed by a raw trailer (`u32` length and bytes), which carries a
//! fetch's record batches as stored, so they are never re-encoded. A frame
//! or trailer over [`MAX_PEER_FRAME`] is refused.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::raft::{ControlResult, NodeId, TypeConfig};
use bytes::{Bytes, BytesMut};
use edgebus_core::controller::ControlRequest;
use edgebus_core::replica::{FetchError, FetchRequest};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

/// The peer protocol's ALPN.
pub const PEER_ALPN: &[u8] = b"edgebus-peer/1";

/// Largest request or response frame. Snapshots are sent in chunks below
/// it (openraft's `snapshot_max_chunk_size` is set under it).
pub const MAX_PEER_FRAME: u32 = 8 << 20;

/// A call from one node to another.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    /// The first message on a connection: who is calling. Checked against
    /// the caller's certificate.
    Hello {
        /// The calling node.
        node: NodeId,
    },
    /// Raft: replicate log entries (also the leader's heartbeat).
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Raft: request a vote.
    Vote(VoteRequest<NodeId>),
    /// Raft: a chunk of a snapshot.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// Commit a control request; only the control log's leader does.
    Propose(ControlRequest),
    /// A node is alive, in this process incarnation; only the control
    /// log's leader tracks it.
    Heartbeat {
        /// The node.
        node: NodeId,
        /// Its process incarnation.
        incarnation: u64,
        /// Where Kafka clients reach it, if it has a Kafka listener: the
        /// Kafka door's metadata names every node's.
        #[serde(default)]
        kafka: Option<String>,
    },
    /// A follower's fetch from a partition's leader.
    Fetch {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The replication request.
        request: FetchRequest,
        /// Most bytes of batches to send (at least one batch is sent).
        max_bytes: u32,
    },
    /// Dead letters for partition 0 of a dead-letter topic this node is
    /// told the callee leads, appended there with `acks=all`.
    AppendDeadLetters {
        /// The dead-letter topic.
        topic: String,
        /// One encoded batch.
        #[serde(with = "edgebus_core::controller::base64_bytes")]
        batch: Vec<u8>,
        /// Records in it.
        record_count: u32,
    },
    /// The callee's batch at `offset`, stamped `leader_epoch`, for the last
    /// in-sync replica mending its damaged copy of it.
    MendBatch {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Base offset of the batch.
        offset: u64,
        /// The epoch the asking replica's epoch table gives it.
        leader_epoch: i32,
    },
}

/// The leader's answer to [`PeerRequest::Fetch`]; the batches' bytes are
/// the response's trailer, in order.
#[derive(Debug, Serialize, Deserialize)]
pub enum FetchReply {
    /// Batches from the fetch offset on.
    Records {
        /// Each batch's place and size in the trailer.
        batches: Vec<BatchMeta>,
        /// `(producer id, base offset of its last batch sent, encoded
        /// state)` of the producers whose batches are sent.
        producers: Vec<(i64, u64, Vec<u8>)>,
        /// The leader's high watermark.
        high_watermark: u64,
    },
    /// Where the follower's log diverges.
    Diverging {
        /// The leader's epoch at or below the follower's last.
        epoch: Option<i32>,
        /// Where it ends.
        end_offset: u64,
        /// The leader's high watermark.
        high_watermark: u64,
    },
    /// Not served.
    Refused(FetchError),
}

/// One batch of a [`FetchReply::Records`].
#[derive(Debug, Serialize, Deserialize)]
pub struct BatchMeta {
    /// Its base offset.
    pub base_offset: u64,
    /// Records in it.
    pub record_count: u32,
    /// The leader epoch it is stamped with.
    pub leader_epoch: i32,
    /// Its length in the trailer.
    pub len: u32,
}

/// The answer to a [`PeerRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    /// To `Hello`.
    Welcome,
    /// To `AppendEntries`.
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// To `Vote`.
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// To `InstallSnapshot`.
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// To `Propose`: the state machine's answer once committed, and the
    /// index of the entry in the control log.
    Proposed(ControlResult, u64),
    /// To `Heartbeat`.
    HeartbeatSeen,
    /// To `Fetch`.
    Fetched(FetchReply),
    /// To `MendBatch`: whether the callee has that batch whole; if so, its
    /// bytes are the trailer.
    MendCopy(bool),
    /// To `AppendDeadLetters`: the batch's base offset, or the refusal's
    /// error code and message.
    DeadLettersAppended(Result<u64, (u16, String)>),
    /// The callee does not lead the control log; `leader` does, if known.
    NotLeader {
        /// The leader the callee knows of.
        leader: Option<NodeId>,
    },
    /// The request could not be served.
    Failed(String),
}

/// Why a peer call failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No connection could be made, or it broke.
    #[error("node {node} unreachable: {detail}")]
    Unreachable {
        /// The node.
        node: NodeId,
        /// Why.
        detail: String,
    },
    /// The node is not in the peer list.
    #[error("node {0} is not a peer")]
    UnknownNode(NodeId),
    /// No answer within the deadline.
    #[error("node {0} did not answer in time")]
    Timeout(NodeId),
    /// A malformed or oversized frame.
    #[error("bad frame from node {node}: {detail}")]
    BadFrame {
        /// The node.
        node: NodeId,
        /// Why.
        detail: String,
    },
}

/// Writes one frame: length and JSON.
async fn write_frame<T: Serialize>(send: &mut quinn::SendStream, value: &T) -> Result<(), String> {
    let body = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|len| *len <= MAX_PEER_FRAME)
        .ok_or_else(|| format!("frame of {} bytes over {MAX_PEER_FRAME}", body.len()))?;
    send.write_all(&len.to_be_bytes())
        .await
        .map_err(|e| e.to_string())?;
    send.write_all(&body).await.map_err(|e| e.to_string())
}

/// A response's raw trailer, in pieces sent back to back as one: batches
/// as the store read them go to QUIC without being copied together.
pub type Trailer = Vec<Bytes>;

/// Writes a raw trailer: length and bytes.
async fn write_trailer(send: &mut quinn::SendStream, mut pieces: Trailer) -> Result<(), String> {
    let total: usize = pieces.iter().map(Bytes::len).sum();
    let len = u32::try_from(total)
        .ok()
        .filter(|len| *len <= MAX_PEER_FRAME)
        .ok_or_else(|| format!("trailer of {total} bytes over {MAX_PEER_FRAME}"))?;
    send.write_all(&len.to_be_bytes())
        .await
        .map_err(|e| e.to_string())?;
    send.write_all_chunks(&mut pieces)
        .await
        .map_err(|e| e.to_string())
}

/// Reads a raw trailer, refusing one over [`MAX_PEER_FRAME`]. It is read
/// chunk by chunk as QUIC received it, into a buffer it is copied to once
/// (not zeroed first).
async fn read_trailer(recv: &mut quinn::RecvStream) -> Result<Bytes, String> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.map_err(|e| e.to_string())?;
    let len = u32::from_be_bytes(len);
    if len > MAX_PEER_FRAME {
        return Err(format!("trailer of {len} bytes over {MAX_PEER_FRAME}"));
    }
    let len = len as usize;
    let mut bytes = BytesMut::with_capacity(len);
    while bytes.len() < len {
        let chunk = recv
            .read_chunk(len - bytes.len(), true)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("trailer cut short at {} of {len} bytes", bytes.len()))?;
        bytes.extend_from_slice(&chunk.bytes);
    }
    Ok(bytes.freeze())
}

/// Reads one frame, refusing one over [`MAX_PEER_FRAME`].
async fn read_frame<T: for<'a> Deserialize<'a>>(
    recv: &mut quinn::RecvStream,
) -> Result<Option<T>, String> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let len = u32::from_be_bytes(len);
    if len > MAX_PEER_FRAME {
        return Err(format!("frame of {len} bytes over {MAX_PEER_FRAME}"));
    }
    let mut body = vec![0u8; len as usize];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Dials and keeps one connection per peer, redialling after a failure.
pub struct Peers {
    local: NodeId,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    addrs: BTreeMap<NodeId, String>,
    connections: Mutex<BTreeMap<NodeId, quinn::Connection>>,
}

impl Peers {
    /// Peers reached through `endpoint` with `client` (the node's
    /// certificate, the cluster CA, ALPN `edgebus-peer/1`).
    pub fn new(
        local: NodeId,
        endpoint: quinn::Endpoint,
        client: quinn::ClientConfig,
        addrs: BTreeMap<NodeId, String>,
    ) -> Self {
        Peers {
            local,
            endpoint,
            client,
            addrs,
            connections: Mutex::new(BTreeMap::new()),
        }
    }

    /// Calls `node` and waits at most `timeout` for the answer.
    pub async fn call(
        &self,
        node: NodeId,
        request: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, PeerError> {
        self.call_with_trailer(node, request, timeout)
            .await
            .map(|(response, _)| response)
    }

    /// [`Peers::call`], with the response's trailer.
    pub async fn call_with_trailer(
        &self,
        node: NodeId,
        request: &PeerRequest,
        timeout: Duration,
    ) -> Result<(PeerResponse, Bytes), PeerError> {
        match tokio::time::timeout(timeout, self.call_inner(node, request)).await {
            Ok(result) => result,
            Err(_) => Err(PeerError::Timeout(node)),
        }
    }

    async fn call_inner(
        &self,
        node: NodeId,
        request: &PeerRequest,
    ) -> Result<(PeerResponse, Bytes), PeerError> {
        let connection = self.connection(node).await?;
        let unreachable = |detail: String| PeerError::Unreachable { node, detail };
        let result = async {
            let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
            write_frame(&mut send, request).await?;
            send.finish().map_err(|e| e.to_string())?;
            match read_frame::<PeerResponse>(&mut recv).await? {
                Some(response) => Ok(Some((response, read_trailer(&mut recv).await?))),
                None => Ok(None),
            }
        }
        .await;
        match result {
            Ok(Some(answer)) => Ok(answer),
            Ok(None) => Err(PeerError::BadFrame {
                node,
                detail: "no answer".into(),
            }),
            Err(detail) => {
                self.forget(node, &connection);
                Err(unreachable(detail))
            }
        }
    }

    /// The open connection to `node`, dialling (and introducing this node)
    /// if there is none.
    async fn connection(&self, node: NodeId) -> Result<quinn::Connection, PeerError> {
        if let Some(connection) = self.lock().get(&node)
            && connection.close_reason().is_none()
        {
            return Ok(connection.clone());
        }
        let addr = self.addrs.get(&node).ok_or(PeerError::UnknownNode(node))?;
        let unreachable = |detail: String| PeerError::Unreachable { node, detail };
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host(addr.as_str())
            .await
            .map_err(|e| unreachable(format!("resolving {addr}: {e}")))?
            .collect();
        let target = resolved
            .first()
            .copied()
            .ok_or_else(|| unreachable(format!("{addr} resolves to nothing")))?;
        let connection = self
            .endpoint
            .connect_with(self.client.clone(), target, &crate::tls::node_name(node))
            .map_err(|e| unreachable(e.to_string()))?
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let hello = async {
            let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
            write_frame(&mut send, &PeerRequest::Hello { node: self.local }).await?;
            send.finish().map_err(|e| e.to_string())?;
            match read_frame::<PeerResponse>(&mut recv).await? {
                Some(PeerResponse::Welcome) => read_trailer(&mut recv).await.map(|_| ()),
                other => Err(format!("refused the introduction: {other:?}")),
            }
        };
        hello.await.map_err(unreachable)?;
        self.lock().insert(node, connection.clone());
        Ok(connection)
    }

    fn forget(&self, node: NodeId, connection: &quinn::Connection) {
        let mut connections = self.lock();
        if connections
            .get(&node)
            .is_some_and(|c| c.stable_id() == connection.stable_id())
        {
            connections.remove(&node);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, quinn::Connection>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// What answers peer requests on this node.
pub trait PeerService: Send + Sync + 'static {
    /// Answers one request from node `from`, with the response's trailer.
    fn handle(
        &self,
        from: NodeId,
        request: PeerRequest,
    ) -> impl std::future::Future<Output = (PeerResponse, Trailer)> + Send;
}

/// Serves a peer connection: the first stream must introduce a node the
/// certificate names; every later stream is one call.
pub async fn serve<S: PeerService>(
    connection: quinn::Connection,
    verifier: Arc<crate::tls::PeerVerifier>,
    service: Arc<S>,
) {
    let remote = connection.remote_address();
    let Ok((mut send, mut recv)) = connection.accept_bi().await else {
        return;
    };
    let node = match read_frame::<PeerRequest>(&mut recv).await {
        Ok(Some(PeerRequest::Hello { node })) => node,
        other => {
            tracing::warn!(%remote, ?other, "peer connection without an introduction");
            connection.close(1u32.into(), b"introduce yourself first");
            return;
        }
    };
    if let Err(e) = verifier.verify(&connection, node) {
        tracing::warn!(%remote, node, error = %e, "peer refused");
        if write_frame(&mut send, &PeerResponse::Failed(e.clone()))
            .await
            .is_ok()
        {
            let _ = write_trailer(&mut send, Vec::new()).await;
        }
        let _ = send.finish();
        connection.close(1u32.into(), b"peer certificate refused");
        return;
    }
    if write_frame(&mut send, &PeerResponse::Welcome)
        .await
        .is_err()
        || write_trailer(&mut send, Vec::new()).await.is_err()
    {
        return;
    }
    let _ = send.finish();
    tracing::debug!(%remote, node, "peer connected");
    loop {
        let (mut send, mut recv) = match connection.accept_bi().await {
            Ok(streams) => streams,
            Err(e) => {
                tracing::debug!(%remote, node, reason = %e, "peer connection closed");
                return;
            }
        };
        let service = service.clone();
        tokio::spawn(async move {
            let (response, trailer) = match read_frame::<PeerRequest>(&mut recv).await {
                Ok(Some(request)) => service.handle(node, request).await,
                Ok(None) => return,
                Err(e) => (PeerResponse::Failed(format!("bad frame: {e}")), Vec::new()),
            };
            if write_frame(&mut send, &response).await.is_ok()
                && write_trailer(&mut send, trailer).await.is_ok()
            {
                let _ = send.finish();
            }
        });
    }
}
