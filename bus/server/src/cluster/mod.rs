//! Cluster membership and the control plane: a fixed set of nodes (the
//! `--peer` list) runs one control log (openraft, [`raft`]) over
//! authenticated QUIC ([`peer`]), whose state machine is
//! [`edgebus_core::controller::ClusterState`].
//!
//! Every node applies the control log and so holds the whole cluster state.
//! The node leading the control log is the *controller*: it tracks every
//! node's heartbeats ([`Liveness`]) and proposes fencing a node silent for
//! a session timeout, unfencing it when it is heard again, and registering
//! a node's new process incarnation (which re-elects the partitions a
//! restarted node led). A controller that has just taken over gives every
//! node a full session before fencing it.
//!
//! Proposals may be made on any node: a follower of the control log
//! forwards them to its leader.

mod data;
mod dead_letters;
mod mend;
mod offsets;
pub mod peer;
mod pipelines;
pub mod raft;
mod registry;
pub mod scrub;

pub use registry::{LocalPlugins, PluginClusterError, ReplicatedError};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use edgebus_core::controller::{ClusterState, ControlRequest, Liveness, NodeId};
use openraft::ServerState;
use openraft::error::{
    ClientWriteError, InitializeError, InstallSnapshotError, NetworkError, RPCError, RaftError,
    RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tokio::sync::watch;

use self::peer::{PeerError, PeerRequest, PeerResponse, PeerService, Peers};
use self::raft::{ControlResult, PeerNode, Raft, TypeConfig};
use crate::tls::PeerVerifier;

/// Control-log heartbeat interval. Elections start after 1–2 s without
/// one, so a dead controller is replaced in about 3–4.5 s, inside the
/// default session timeout of 6 s.
const RAFT_HEARTBEAT_MS: u64 = 250;
const RAFT_ELECTION_MIN_MS: u64 = 1_000;
const RAFT_ELECTION_MAX_MS: u64 = 2_000;

/// How often the controller checks sessions.
const CONTROLLER_TICK: Duration = Duration::from_millis(200);

/// Longest a proposal waits for a control log leader to commit it.
const PROPOSE_DEADLINE: Duration = Duration::from_secs(10);

/// Longest a committed proposal waits to be applied on the node that made
/// it; a node cut off from the control log answers after this.
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// Everything a node needs to join its cluster.
#[derive(Debug, Clone)]
pub struct Setup {
    /// This node.
    pub node: NodeId,
    /// Every node, this one included, with its address as configured.
    pub peers: BTreeMap<NodeId, String>,
    /// The cluster CA certificate peers' certificates chain to.
    pub ca: std::path::PathBuf,
    /// This node's certificate and key.
    pub files: crate::tls::TlsFiles,
    /// `control.redb`.
    pub control_path: std::path::PathBuf,
    /// Fence a node silent this long.
    pub session_timeout: Duration,
    /// How often a pipeline's runner checkpoints its progress.
    pub pipeline_checkpoint: Duration,
}

/// Why a cluster node could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The settings do not describe a cluster this node is in.
    #[error("cluster settings: {0}")]
    Config(String),
    /// TLS material is missing or unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The control log could not be opened or started.
    #[error("control log: {0}")]
    ControlLog(String),
}

/// Why a proposal was not committed.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// No control log leader committed it within the deadline (no quorum
    /// of nodes reachable).
    #[error("no control log leader answered within {0:?}: is a majority of nodes up?")]
    NoQuorum(Duration),
    /// The control log failed.
    #[error("control log: {0}")]
    ControlLog(String),
}

/// A running cluster node. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    node: NodeId,
    incarnation: u64,
    raft: Raft,
    state: watch::Receiver<Arc<ClusterState>>,
    peers: Arc<Peers>,
    verifier: Arc<PeerVerifier>,
    addrs: BTreeMap<NodeId, String>,
    session_timeout: Duration,
    pipeline_checkpoint: Duration,
    /// The controller's view of sessions; `None` while this node does not
    /// lead the control log.
    liveness: Mutex<Option<Liveness>>,
    /// When each peer's heartbeat last reached this node. Every node
    /// hears every other, so a node that becomes controller knows who has
    /// already been silent, instead of granting a dead node (often the old
    /// controller itself) a fresh session.
    heard: Mutex<BTreeMap<NodeId, Instant>>,
    /// Each node's Kafka listener address, as its heartbeats say (this
    /// node's own once [`Cluster::advertise_kafka`] is called).
    kafka: Mutex<BTreeMap<NodeId, String>>,
    /// When this node started: a peer never heard from since has been
    /// silent at least that long.
    started: Instant,
    /// Registrations proposed and not yet seen applied.
    registering: Mutex<BTreeSet<(NodeId, u64)>>,
    /// Plugin components kept beside the cluster state.
    blobs: raft::Blobs,
    /// The node's data side, once attached; taken at shutdown, so the
    /// store closes even while a peer task still holds the cluster.
    data: Mutex<Option<Arc<data::DataPlane>>>,
    /// The cluster's background tasks, ended by [`Cluster::shutdown`].
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// What `edgebus cluster status` shows.
#[derive(Debug, Clone)]
pub struct Status {
    /// This node.
    pub node: NodeId,
    /// The node leading the control log, if known.
    pub controller: Option<NodeId>,
    /// The control log's term.
    pub term: u64,
    /// Index of the last control log entry applied here.
    pub applied_index: u64,
    /// Every node of the cluster.
    pub nodes: Vec<NodeStatus>,
}

/// One node in [`Status`].
#[derive(Debug, Clone)]
pub struct NodeStatus {
    /// Its id.
    pub id: NodeId,
    /// Its address.
    pub address: String,
    /// Registered and not fenced: heard from within a session.
    pub up: bool,
}

impl Cluster {
    /// Opens the control log, joins the cluster through `endpoint` and
    /// starts the heartbeat and controller tasks.
    pub async fn start(setup: Setup, endpoint: quinn::Endpoint) -> Result<Cluster, ClusterError> {
        if !setup.peers.contains_key(&setup.node) {
            return Err(ClusterError::Config(format!(
                "node {} is not in the peer list {:?}",
                setup.node,
                setup.peers.keys().collect::<Vec<_>>()
            )));
        }
        let client = crate::tls::peer_client_config(&setup.files, &setup.ca)?;
        let verifier = Arc::new(PeerVerifier::new(&setup.ca)?);
        let peers = Arc::new(Peers::new(
            setup.node,
            endpoint,
            client,
            setup.peers.clone(),
        ));
        let (log, machine, state) =
            raft::open(&setup.control_path).map_err(ClusterError::ControlLog)?;
        let blobs = machine.blobs();
        let config = openraft::Config {
            cluster_name: "edgebus".into(),
            heartbeat_interval: RAFT_HEARTBEAT_MS,
            election_timeout_min: RAFT_ELECTION_MIN_MS,
            election_timeout_max: RAFT_ELECTION_MAX_MS,
            install_snapshot_timeout: 2_000,
            // Chunks stay well under the peer frame limit.
            snapshot_max_chunk_size: u64::from(peer::MAX_PEER_FRAME / 4),
            // Entries may carry plugin components: bounded so every append
            // fits the peer frame.
            max_payload_entries: registry::MAX_ENTRIES_PER_APPEND,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::ControlLog(e.to_string()))?;
        let network = Network {
            peers: peers.clone(),
        };
        let raft = Raft::new(setup.node, Arc::new(config), network, log, machine)
            .await
            .map_err(|e| ClusterError::ControlLog(e.to_string()))?;
        // Every node proposes the same membership, byte for byte, from the
        // same peer list; on a restart the log is not empty and raft says
        // so, which is fine.
        let members: BTreeMap<NodeId, PeerNode> = setup
            .peers
            .iter()
            .map(|(id, addr)| (*id, PeerNode { addr: addr.clone() }))
            .collect();
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| ClusterError::ControlLog(e.to_string()))?;
        if !initialized {
            match raft.initialize(members).await {
                // Another node's initialization reached this one first.
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(ClusterError::ControlLog(e.to_string())),
            }
        }
        let cluster = Cluster {
            inner: Arc::new(Inner {
                node: setup.node,
                incarnation: incarnation(),
                raft,
                state,
                peers,
                verifier,
                addrs: setup.peers,
                session_timeout: setup.session_timeout,
                pipeline_checkpoint: setup.pipeline_checkpoint,
                liveness: Mutex::new(None),
                heard: Mutex::new(BTreeMap::new()),
                kafka: Mutex::new(BTreeMap::new()),
                started: Instant::now(),
                registering: Mutex::new(BTreeSet::new()),
                blobs,
                data: Mutex::new(None),
                tasks: Mutex::new(Vec::new()),
            }),
        };
        cluster.spawn(cluster.clone().heartbeats());
        cluster.spawn(cluster.clone().control());
        Ok(cluster)
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.inner.node
    }

    /// The cluster state as applied on this node.
    pub fn state(&self) -> Arc<ClusterState> {
        self.inner.state.borrow().clone()
    }

    /// Whether the control log holds topic `name` (this node may not have
    /// created it yet).
    pub fn has_topic(&self, name: &str) -> bool {
        self.inner.state.borrow().topics.contains_key(name)
    }

    /// Serves an incoming peer connection.
    pub async fn serve_peer(&self, connection: quinn::Connection) {
        peer::serve(
            connection,
            self.inner.verifier.clone(),
            Arc::new(self.clone()),
        )
        .await;
    }

    /// Commits `request` through the control log, forwarding it to the
    /// control log's leader, and returns the state machine's answer once
    /// this node has applied it too (for at most [`APPLY_WAIT`]): whoever
    /// asked this node reads its state next, as a client that created a
    /// topic here asks this node about it.
    pub async fn propose(&self, request: ControlRequest) -> Result<ControlResult, ProposeError> {
        let (answer, index) = self.commit_entry(request).await?;
        if let Err(e) = self.applied_here(index).await {
            tracing::warn!(index, error = %e, "a committed proposal is not applied on this node yet");
        }
        Ok(answer)
    }

    /// Waits, for at most [`APPLY_WAIT`], until this node has applied the
    /// control log up to `index`: its state then shows that entry, since
    /// the state is published as entries are applied.
    async fn applied_here(&self, index: u64) -> Result<(), impl std::fmt::Display + use<>> {
        self.inner
            .raft
            .wait(Some(APPLY_WAIT))
            .applied_index_at_least(Some(index), "an entry applied here")
            .await
            .map(drop)
    }

    /// Commits `request` through the control log's leader: its answer and
    /// the entry's index.
    async fn commit_entry(
        &self,
        request: ControlRequest,
    ) -> Result<(ControlResult, u64), ProposeError> {
        let deadline = Instant::now() + PROPOSE_DEADLINE;
        while Instant::now() < deadline {
            match self.inner.raft.client_write(request.clone()).await {
                Ok(response) => return Ok((response.data, response.log_id.index)),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                    if let Some(leader) = forward.leader_id.filter(|l| *l != self.inner.node) {
                        let call = PeerRequest::Propose(request.clone());
                        let left = deadline.saturating_duration_since(Instant::now());
                        if let Ok(PeerResponse::Proposed(answer, index)) =
                            self.inner.peers.call(leader, &call, left).await
                        {
                            return Ok((answer, index));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(ProposeError::ControlLog(e.to_string())),
            }
        }
        Err(ProposeError::NoQuorum(PROPOSE_DEADLINE))
    }

    /// The control log and node states as this node sees them.
    pub fn status(&self) -> Status {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let state = self.state();
        let nodes = self
            .inner
            .addrs
            .iter()
            .map(|(id, address)| NodeStatus {
                id: *id,
                address: address.clone(),
                up: state.nodes.get(id).is_some_and(|meta| !meta.fenced),
            })
            .collect();
        Status {
            node: self.inner.node,
            controller: metrics.current_leader,
            term: metrics.current_term,
            applied_index: metrics.last_applied.map_or(0, |l| l.index),
            nodes,
        }
    }

    /// The node coordinating consumer group `group` (see
    /// [`ClusterState::coordinator`]) and its address, if any node is live.
    pub fn coordinator(&self, group: &str) -> Option<(NodeId, String)> {
        let node = self.state().coordinator(group)?;
        Some((node, self.inner.addrs.get(&node)?.clone()))
    }

    /// Tells the other nodes where Kafka clients reach this one.
    pub fn advertise_kafka(&self, address: String) {
        self.kafka().insert(self.inner.node, address);
    }

    /// Every node's Kafka listener address known here, this node's
    /// included.
    pub fn kafka_brokers(&self) -> BTreeMap<NodeId, String> {
        self.kafka().clone()
    }

    fn kafka(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, String>> {
        self.inner
            .kafka
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops the background tasks and the control log.
    pub async fn shutdown(&self) {
        let tasks = std::mem::take(
            &mut *self
                .inner
                .tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        let _ = self.inner.raft.shutdown().await;
        self.inner
            .data
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Runs a background task until [`Cluster::shutdown`].
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task);
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(handle);
    }

    /// Whether this node leads the control log right now.
    fn leads(&self) -> bool {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        metrics.state == ServerState::Leader && metrics.current_leader == Some(self.inner.node)
    }

    /// Sends this node's heartbeat to every peer every sixth of a session
    /// timeout: the controller renews the session with it, the others
    /// remember it for when one of them takes over.
    async fn heartbeats(self) {
        let every = self.inner.session_timeout / 6;
        loop {
            let beat = PeerRequest::Heartbeat {
                node: self.inner.node,
                incarnation: self.inner.incarnation,
                kafka: self.kafka().get(&self.inner.node).cloned(),
            };
            if self.leads() {
                self.seen(self.inner.node, self.inner.incarnation);
            }
            let peers = self.inner.addrs.keys().filter(|n| **n != self.inner.node);
            let (to, beat) = (&self.inner.peers, &beat);
            futures::future::join_all(peers.map(|&peer| async move {
                if let Err(e) = to.call(peer, beat, every).await {
                    tracing::debug!(peer, error = %e, "heartbeat not delivered");
                }
            }))
            .await;
            tokio::time::sleep(every).await;
        }
    }

    /// The controller's duties, while this node leads the control log.
    async fn control(self) {
        loop {
            tokio::time::sleep(CONTROLLER_TICK).await;
            if !self.leads() {
                *self.liveness() = None;
                continue;
            }
            let state = self.state();
            let proposals = {
                let mut liveness = self.liveness();
                let liveness = liveness.get_or_insert_with(|| {
                    let mut liveness =
                        Liveness::new(Instant::now(), self.inner.session_timeout, &state);
                    let heard = self.heard();
                    for node in state.nodes.keys().filter(|n| **n != self.inner.node) {
                        let at = heard.get(node).copied().unwrap_or(self.inner.started);
                        liveness.handle_heartbeat(at, *node);
                    }
                    liveness
                });
                liveness.proposals(Instant::now(), &state)
            };
            for request in proposals {
                tracing::info!(?request, "controller proposes");
                if let Err(e) = self.inner.raft.client_write(request).await {
                    tracing::debug!(error = %e, "controller proposal not committed");
                    break;
                }
            }
        }
    }

    /// The controller heard from `node` in `incarnation`: renews its
    /// session, and registers the incarnation if it is new.
    fn seen(&self, node: NodeId, incarnation: u64) {
        if let Some(liveness) = self.liveness().as_mut() {
            liveness.handle_heartbeat(Instant::now(), node);
        }
        let known = self.state().nodes.get(&node).map(|meta| meta.incarnation);
        if known == Some(incarnation) {
            self.registering().retain(|(n, _)| *n != node);
            return;
        }
        let Some(address) = self.inner.addrs.get(&node).cloned() else {
            return;
        };
        if !self.registering().insert((node, incarnation)) {
            return;
        }
        let cluster = self.clone();
        tokio::spawn(async move {
            let request = ControlRequest::RegisterNode {
                node,
                address,
                incarnation,
            };
            if let Err(e) = cluster.inner.raft.client_write(request).await {
                tracing::debug!(node, error = %e, "registration not committed");
            }
            cluster.registering().remove(&(node, incarnation));
        });
    }

    fn heard(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Instant>> {
        self.inner
            .heard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn liveness(&self) -> std::sync::MutexGuard<'_, Option<Liveness>> {
        self.inner
            .liveness
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn registering(&self) -> std::sync::MutexGuard<'_, BTreeSet<(NodeId, u64)>> {
        self.inner
            .registering
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl PeerService for Cluster {
    async fn handle(&self, _from: NodeId, request: PeerRequest) -> (PeerResponse, peer::Trailer) {
        let raft = &self.inner.raft;
        let response = match request {
            PeerRequest::Fetch {
                topic,
                partition,
                request,
                max_bytes,
            } => return self.serve_fetch(topic, partition, request, max_bytes).await,
            PeerRequest::AppendDeadLetters {
                topic,
                batch,
                record_count,
            } => PeerResponse::DeadLettersAppended(
                self.append_here(topic, batch.into(), record_count)
                    .await
                    .map_err(|e| (crate::error::Coded::code(&e) as u16, e.to_string())),
            ),
            PeerRequest::MendBatch {
                topic,
                partition,
                offset,
                leader_epoch,
            } => {
                return self
                    .serve_mend(topic, partition, offset, leader_epoch)
                    .await;
            }
            PeerRequest::Hello { .. } => PeerResponse::Welcome,
            PeerRequest::AppendEntries(rpc) => {
                PeerResponse::AppendEntries(raft.append_entries(rpc).await)
            }
            PeerRequest::Vote(rpc) => PeerResponse::Vote(raft.vote(rpc).await),
            PeerRequest::InstallSnapshot(rpc) => {
                PeerResponse::InstallSnapshot(raft.install_snapshot(rpc).await)
            }
            PeerRequest::Propose(request) => match raft.client_write(request).await {
                Ok(response) => PeerResponse::Proposed(response.data, response.log_id.index),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                    PeerResponse::NotLeader {
                        leader: forward.leader_id,
                    }
                }
                Err(e) => PeerResponse::Failed(e.to_string()),
            },
            PeerRequest::Heartbeat {
                node,
                incarnation,
                kafka,
            } => {
                self.heard().insert(node, Instant::now());
                if let Some(address) = kafka {
                    self.kafka().insert(node, address);
                }
                if self.leads() {
                    self.seen(node, incarnation);
                    PeerResponse::HeartbeatSeen
                } else {
                    PeerResponse::NotLeader {
                        leader: raft.metrics().borrow().current_leader,
                    }
                }
            }
        };
        (response, Vec::new())
    }
}

/// A number no earlier start of this node used: nanoseconds since the
/// epoch, mixed with randomness in case the clock was set back.
fn incarnation() -> u64 {
    let mut random = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ u64::from_be_bytes(random)
}

/// openraft's view of the peers.
struct Network {
    peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Link;

    async fn new_client(&mut self, target: NodeId, _node: &PeerNode) -> Self::Network {
        Link {
            target,
            peers: self.peers.clone(),
        }
    }
}

/// The raft RPCs to one peer.
struct Link {
    target: NodeId,
    peers: Arc<Peers>,
}

impl Link {
    async fn call<E: std::error::Error>(
        &self,
        request: PeerRequest,
        option: &RPCOption,
    ) -> Result<PeerResponse, RPCError<NodeId, PeerNode, E>> {
        match self
            .peers
            .call(self.target, &request, option.hard_ttl())
            .await
        {
            Ok(response) => Ok(response),
            // A peer that does not answer within the RPC's deadline is as
            // good as down: openraft then backs off instead of retrying at
            // once and logging every attempt.
            Err(
                e @ (PeerError::Unreachable { .. }
                | PeerError::UnknownNode(_)
                | PeerError::Timeout(_)),
            ) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    fn unexpected<E: std::error::Error>(response: PeerResponse) -> RPCError<NodeId, PeerNode, E> {
        let detail = std::io::Error::other(format!("unexpected answer {response:?}"));
        RPCError::Network(NetworkError::new(&detail))
    }
}

impl RaftNetwork<TypeConfig> for Link {
    /// Retries to an unreachable peer wait 250 ms, then 500 ms: never
    /// longer than half the shortest election timeout, so a peer that comes
    /// back hears from the leader before it would start an election of its
    /// own and depose a healthy controller.
    fn backoff(&self) -> openraft::network::Backoff {
        let steps = std::iter::once(250).chain(std::iter::repeat(RAFT_ELECTION_MIN_MS / 2));
        openraft::network::Backoff::new(steps.map(Duration::from_millis))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        match self.call(PeerRequest::AppendEntries(rpc), &option).await? {
            PeerResponse::AppendEntries(result) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(Self::unexpected(other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, PeerNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .call(PeerRequest::InstallSnapshot(rpc), &option)
            .await?
        {
            PeerResponse::InstallSnapshot(result) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(Self::unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, PeerNode, RaftError<NodeId>>> {
        match self.call(PeerRequest::Vote(rpc), &option).await? {
            PeerResponse::Vote(result) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(Self::unexpected(other)),
        }
    }
}
