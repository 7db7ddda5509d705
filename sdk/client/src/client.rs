//! The connection to a broker, and admin requests.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use edgebus_proto::batch::{self, StoredRecord};
use edgebus_proto::frame::{ClusterStatus, PartitionInfo, Position, Request, Response, TopicSpec};
use edgebus_proto::limits::DEFAULT_MAX_FRAME_BYTES;
use edgebus_proto::local::DEFAULT_PORT;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use quinn::crypto::rustls::QuicClientConfig;
use tokio::sync::Mutex;

use crate::error::{BrokerAddrError, ClientError};
use crate::tls::{self, Identity};
use crate::wire;

/// Where a broker listens: an IP address, or a host name that is resolved
/// each time the client (re)connects.
///
/// Parses from `host:port`, `ip:port`, `[ipv6]:port`, or a host or IP alone
/// (port 7171); converts from a [`SocketAddr`] or a `(host, port)` pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BrokerAddr {
    /// An IP address and port, used as is.
    Ip(SocketAddr),
    /// A host name and port, resolved at connect time.
    Host {
        /// DNS name (or a name in the hosts file).
        host: String,
        /// UDP port.
        port: u16,
    },
}

impl BrokerAddr {
    /// The addresses to try, resolving a host name now.
    async fn resolve(&self) -> Result<Vec<SocketAddr>, ClientError> {
        let (host, port) = match self {
            BrokerAddr::Ip(addr) => return Ok(vec![*addr]),
            BrokerAddr::Host { host, port } => (host.as_str(), *port),
        };
        let failed = |detail: String| ClientError::Connection {
            addr: self.to_string(),
            detail,
        };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| failed(format!("resolving {host}: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(failed(format!("{host} resolves to no address")));
        }
        Ok(addrs)
    }
}

impl From<SocketAddr> for BrokerAddr {
    fn from(addr: SocketAddr) -> Self {
        BrokerAddr::Ip(addr)
    }
}

impl From<(&str, u16)> for BrokerAddr {
    /// An IP literal becomes [`BrokerAddr::Ip`]; anything else a host name.
    fn from((host, port): (&str, u16)) -> Self {
        match host.parse::<IpAddr>() {
            Ok(ip) => BrokerAddr::Ip(SocketAddr::new(ip, port)),
            Err(_) => BrokerAddr::Host {
                host: host.to_owned(),
                port,
            },
        }
    }
}

impl From<(String, u16)> for BrokerAddr {
    fn from((host, port): (String, u16)) -> Self {
        BrokerAddr::from((host.as_str(), port))
    }
}

impl FromStr for BrokerAddr {
    type Err = BrokerAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| BrokerAddrError {
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(BrokerAddr::Ip(addr));
        }
        // A bare IPv6 address is all colons, so it is tried before
        // splitting off a port.
        let bare = s.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
        if let Ok(ip) = bare.unwrap_or(s).parse::<IpAddr>() {
            return Ok(BrokerAddr::Ip(SocketAddr::new(ip, DEFAULT_PORT)));
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((host, port)) => {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| invalid("the port is not a number from 1 to 65535"))?;
                (host, port)
            }
            None => (s, DEFAULT_PORT),
        };
        if port == 0 {
            return Err(invalid("port 0 cannot be connected to"));
        }
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Err(invalid(
                "a host is a name of letters, digits, '-', '_' and '.', or an IP address (IPv6 in brackets with a port)",
            ));
        }
        Ok(BrokerAddr::Host {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for BrokerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerAddr::Ip(addr) => addr.fmt(f),
            BrokerAddr::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// How to reach and authenticate a broker.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Broker address.
    pub broker: BrokerAddr,
    /// More brokers of the same cluster: every (re)connect tries them
    /// together with `broker` and keeps the first that answers, so a client
    /// outlives any one node. Empty by default.
    pub bootstrap: Vec<BrokerAddr>,
    /// Name the broker's certificate must carry.
    pub server_name: String,
    /// PEM file of the CA that signed the broker's certificate.
    pub ca: PathBuf,
    /// Client certificate for brokers that require mTLS.
    pub identity: Option<Identity>,
    /// Largest response frame accepted.
    pub max_frame_bytes: u32,
    /// Time allowed to set up a connection.
    pub connect_timeout: Duration,
}

impl ClientConfig {
    /// A config for `broker` trusting the CA in `ca`.
    ///
    /// `broker` is a [`SocketAddr`], a `(host, port)` pair such as
    /// `("localhost", 7171)`, or a parsed [`BrokerAddr`]. The server name
    /// the certificate must carry is the host name when there is one, and
    /// `localhost` for an IP address (what a broker's self-made certificate
    /// carries); set [`ClientConfig::server_name`] for anything else.
    pub fn new(broker: impl Into<BrokerAddr>, ca: impl Into<PathBuf>) -> Self {
        let broker = broker.into();
        let server_name = match &broker {
            BrokerAddr::Host { host, .. } => host.clone(),
            BrokerAddr::Ip(_) => "localhost".into(),
        };
        ClientConfig {
            broker,
            bootstrap: Vec::new(),
            server_name,
            ca: ca.into(),
            identity: None,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Result of a one-shot fetch.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Records at or after the requested offset.
    pub records: Vec<StoredRecord>,
    /// Oldest retained offset.
    pub log_start: u64,
    /// Offset the next appended record will get.
    pub log_end: u64,
    /// Where to fetch next.
    pub next_offset: u64,
}

/// A handle to one broker. Cheap to clone; clones share the connection,
/// which is re-established transparently after it drops, until
/// [`Client::close`].
///
/// In a cluster, [`Client::leader`] hands out a client for the node leading
/// a partition (the producer sends there); those clients share this one's
/// socket, and closing any of them closes all.
#[derive(Clone)]
pub struct Client {
    node: Arc<Node>,
    shared: Arc<Shared>,
}

/// What every client of one [`Client::connect`] shares.
struct Shared {
    /// The node [`Client::connect`] reached (through its bootstrap list).
    root: Arc<Node>,
    endpoint: quinn::Endpoint,
    quic: quinn::ClientConfig,
    closed: AtomicBool,
    correlation: AtomicU32,
    /// Clients of cluster nodes by address, and partition leaders.
    routes: std::sync::Mutex<Routes>,
}

/// One broker's connection.
struct Node {
    config: ClientConfig,
    conn: Mutex<Option<quinn::Connection>>,
    /// The address the live (or last) connection went to.
    remote: std::sync::Mutex<SocketAddr>,
}

/// What a client has learned about a cluster.
#[derive(Default)]
struct Routes {
    /// A connection per node address (`host:port` as the cluster names it).
    nodes: HashMap<String, Arc<Node>>,
    /// Node addresses by id.
    addresses: HashMap<u64, String>,
    /// Each partition's leader as last learned, with its leader epoch.
    leaders: HashMap<(String, u32), Route>,
}

/// A partition's leader as last learned.
#[derive(Debug, Clone, Copy)]
struct Route {
    leader: u64,
    epoch: i32,
    /// The leader refused or could not be reached: ask again, and take
    /// the first answer with a newer epoch without waiting for the rest.
    stale: bool,
}

/// How long a metadata question to one node may take: a dead node does not
/// answer at all (QUIC learns it only at the idle timeout), and the others
/// answer in a round trip.
const METADATA_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a connect to a node the cluster named may take: the node may
/// have just died (and a QUIC handshake to a dead node only times out), and
/// after a failed connect the caller asks the cluster again, which by then
/// may name its successor.
const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("broker", &self.node.config.broker)
            .finish()
    }
}

impl Client {
    /// Connects to the broker and verifies its certificate. A host name is
    /// resolved now and again on every reconnect. With
    /// [`ClientConfig::bootstrap`] brokers, the first of all to answer is
    /// kept.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let tls = tls::client_config(&config.ca, config.identity.as_ref())?;
        let quic = QuicClientConfig::try_from(tls)
            .map_err(|e| ClientError::Config(format!("QUIC TLS config: {e}")))?;
        let mut quic = quinn::ClientConfig::new(Arc::new(quic));
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_secs(2)));
        transport.max_idle_timeout(Some(
            Duration::from_secs(10)
                .try_into()
                .expect("10 s is a valid idle timeout"),
        ));
        transport.stream_receive_window((8u32 << 20).into());
        transport.receive_window((32u32 << 20).into());
        transport.send_window(32 << 20);
        quic.transport_config(Arc::new(transport));
        let mut addrs = Vec::new();
        for broker in std::iter::once(&config.broker).chain(&config.bootstrap) {
            addrs.extend(broker.resolve().await?);
        }
        let endpoint = bind_for(&addrs).map_err(|e| ClientError::Connection {
            addr: config.broker.to_string(),
            detail: format!("binding UDP socket: {e}"),
        })?;
        let node = Arc::new(Node {
            config,
            conn: Mutex::new(None),
            remote: std::sync::Mutex::new(addrs[0]),
        });
        let client = Client {
            node: node.clone(),
            shared: Arc::new(Shared {
                root: node,
                endpoint,
                quic,
                closed: AtomicBool::new(false),
                correlation: AtomicU32::new(1),
                routes: std::sync::Mutex::new(Routes::default()),
            }),
        };
        client.connection().await?;
        Ok(client)
    }

    /// The address of the broker this client is (or was last) connected to.
    pub fn broker(&self) -> SocketAddr {
        *self.node.remote.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The largest frame this client accepts.
    pub fn max_frame_bytes(&self) -> u32 {
        self.node.config.max_frame_bytes
    }

    /// Closes the connection for this handle and every clone of it, and
    /// waits (briefly: QUIC's closing handshake) until the broker has been
    /// told. Calls in flight fail; later ones, and subscriptions, end with
    /// [`ClientError::Closed`]; nothing reconnects. Flush producers first,
    /// or their unsent records fail.
    pub async fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        if let Some(conn) = self.node.conn.lock().await.take() {
            conn.close(0u32.into(), b"client closed");
        }
        self.shared.endpoint.close(0u32.into(), b"client closed");
        self.shared.endpoint.wait_idle().await;
    }

    /// Closes like [`Client::close`], but waits only until each of the
    /// client's connections has sent its close (at most `limit`), not
    /// through QUIC's closing period of three probe timeouts (about 90 ms
    /// even on loopback), which only matters if the close is lost: for a
    /// process about to exit, which should not leave the broker holding
    /// its connections until their idle timeout, nor make every command
    /// that much slower.
    pub async fn close_promptly(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        self.shared.closed.store(true, Ordering::SeqCst);
        let nodes: Vec<Arc<Node>> = std::iter::once(self.node.clone())
            .chain(std::iter::once(self.shared.root.clone()))
            .chain(self.routes().nodes.values().cloned())
            .collect();
        let mut open = Vec::new();
        for node in nodes {
            // A reconnect in flight holds the lock; past the deadline that
            // node's connection is left to the endpoint's close below.
            if let Ok(mut conn) = tokio::time::timeout_at(deadline, node.conn.lock()).await
                && let Some(conn) = conn.take().filter(|c| c.close_reason().is_none())
            {
                let sent = conn.stats().udp_tx.datagrams;
                conn.close(0u32.into(), b"client closed");
                open.push((conn, sent));
            }
        }
        self.shared.endpoint.close(0u32.into(), b"client closed");
        // The connection's driver task sends the close; its datagram count
        // moves when it has.
        while open
            .iter()
            .any(|(conn, sent)| conn.stats().udp_tx.datagrams == *sent)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Whether [`Client::close`] or [`Client::close_promptly`] has been
    /// called on this client or a clone.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    pub(crate) fn next_correlation_id(&self) -> u32 {
        self.shared.correlation.fetch_add(1, Ordering::Relaxed)
    }

    /// The live connection, reconnecting if the last one was lost.
    pub(crate) async fn connection(&self) -> Result<quinn::Connection, ClientError> {
        let mut slot = self.node.conn.lock().await;
        // Checked under the lock, so a close racing this call cannot leave a
        // fresh connection behind it.
        if self.is_closed() {
            return Err(ClientError::Closed);
        }
        if let Some(conn) = slot.as_ref()
            && conn.close_reason().is_none()
        {
            return Ok(conn.clone());
        }
        let cfg = &self.node.config;
        let err = |detail: String| ClientError::Connection {
            addr: cfg.broker.to_string(),
            detail,
        };
        let ipv6_socket = self
            .shared
            .endpoint
            .local_addr()
            .map_err(|e| err(e.to_string()))?
            .is_ipv6();
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for broker in std::iter::once(&cfg.broker).chain(&cfg.bootstrap) {
            addrs.extend(
                broker
                    .resolve()
                    .await?
                    .into_iter()
                    .filter(|a| ipv6_socket || a.is_ipv4()),
            );
        }
        if addrs.is_empty() {
            return Err(err(
                "it now resolves only to IPv6 addresses, and the client's socket is IPv4".into(),
            ));
        }
        // A name can resolve to addresses the broker does not listen on
        // (`localhost` to ::1 as well as 127.0.0.1), and a QUIC handshake to
        // one of those only fails by timing out; so every address (of every
        // bootstrap broker) is tried at once and the first handshake to
        // finish wins.
        let attempts = addrs.into_iter().map(|addr| {
            let endpoint = &self.shared.endpoint;
            let quic = self.shared.quic.clone();
            Box::pin(async move {
                let connecting = endpoint
                    .connect_with(quic, addr, &cfg.server_name)
                    .map_err(|e| format!("{addr}: {e}"))?;
                let conn = connecting.await.map_err(|e| format!("{addr}: {e}"))?;
                Ok::<_, String>((conn, addr))
            })
        });
        let (conn, addr) =
            tokio::time::timeout(cfg.connect_timeout, futures::future::select_ok(attempts))
                .await
                .map_err(|_| err("connect timed out".into()))?
                .map_err(err)?
                .0;
        *self.node.remote.lock().unwrap_or_else(|p| p.into_inner()) = addr;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Opens a new bidirectional stream on the live connection.
    pub(crate) async fn open_stream(
        &self,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), ClientError> {
        let conn = self.connection().await?;
        conn.open_bi().await.map_err(|e| match e {
            quinn::ConnectionError::LocallyClosed if self.is_closed() => ClientError::Closed,
            e => ClientError::Connection {
                addr: self.node.config.broker.to_string(),
                detail: e.to_string(),
            },
        })
    }

    /// Sends one request on a fresh stream and returns the response. An
    /// error response becomes [`ClientError::Broker`].
    pub async fn request(&self, request: &Request) -> Result<Response, ClientError> {
        let (mut send, mut recv) = self.open_stream().await?;
        let correlation_id = self.next_correlation_id();
        let mut buf = BytesMut::new();
        request.encode(correlation_id, &mut buf);
        wire::write_frames(&mut send, &buf).await?;
        // The broker may already have answered and closed; that is fine.
        let _ = send.finish();
        let body = wire::read_frame(&mut recv, self.node.config.max_frame_bytes)
            .await?
            .ok_or(ClientError::Protocol(
                "stream closed before a response".into(),
            ))?;
        decode_response(body, correlation_id)
    }

    /// Creates a topic.
    pub async fn create_topic(&self, spec: TopicSpec) -> Result<(), ClientError> {
        match self.request(&Request::CreateTopic(spec)).await? {
            Response::TopicCreated => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Deletes a topic and its records.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let name = name.to_owned();
        match self.request(&Request::DeleteTopic { name }).await? {
            Response::TopicDeleted => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Lists topics.
    pub async fn list_topics(&self) -> Result<Vec<TopicSpec>, ClientError> {
        match self.request(&Request::ListTopics).await? {
            Response::Topics(t) => Ok(t),
            other => Err(unexpected(&other)),
        }
    }

    /// A topic's configuration and per-partition offsets.
    pub async fn describe_topic(
        &self,
        name: &str,
    ) -> Result<(TopicSpec, Vec<PartitionInfo>), ClientError> {
        let name = name.to_owned();
        match self.request(&Request::DescribeTopic { name }).await? {
            Response::TopicDescription { spec, partitions } => Ok((spec, partitions)),
            other => Err(unexpected(&other)),
        }
    }

    /// Resolves a position to an offset.
    pub async fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        position: Position,
    ) -> Result<u64, ClientError> {
        let request = Request::ListOffsets {
            topic: topic.to_owned(),
            partition,
            position,
        };
        match self.request(&request).await? {
            Response::Offset { offset } => Ok(offset),
            other => Err(unexpected(&other)),
        }
    }

    /// Reads up to about `max_bytes` of records from `from` once.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        from: Position,
        max_bytes: u32,
    ) -> Result<Fetched, ClientError> {
        let request = Request::Fetch {
            topic: topic.to_owned(),
            partition,
            from,
            max_bytes,
        };
        match self.request(&request).await? {
            Response::Fetched {
                log_start,
                log_end,
                next_offset,
                batches,
            } => {
                let floor = match from {
                    Position::Offset(o) => o,
                    _ => 0,
                };
                Ok(Fetched {
                    records: decode_records(&batches, floor)?,
                    log_start,
                    log_end,
                    next_offset,
                })
            }
            other => Err(unexpected(&other)),
        }
    }
}

/// Leader routing, for clients of a cluster.
impl Client {
    /// The client for the node leading `partition` of `topic`, as last
    /// learned (asking the cluster the first time). On a single node, and
    /// whenever no node can say, it is the client [`Client::connect`] made:
    /// a node that does not lead the partition answers `NotLeader`, and the
    /// caller asks again with [`Client::refresh_leader`].
    pub async fn leader(&self, topic: &str, partition: u32) -> Client {
        let cached = {
            let routes = self.routes();
            routes
                .leaders
                .get(&(topic.to_owned(), partition))
                .filter(|route| !route.stale)
                .and_then(|route| routes.node(route.leader))
        };
        match cached {
            Some(node) => self.with_node(node),
            None => self.refresh_leader(topic, partition).await,
        }
    }

    /// Asks every node this client knows (at once, each for at most
    /// [`METADATA_TIMEOUT`]) who leads `partition` of `topic`, believes the
    /// answer with the highest leader epoch, and returns the client for
    /// that node (see [`Client::leader`]). An answer with an epoch newer
    /// than the one last learned is taken at once: a dead node would
    /// otherwise hold every refresh up for the whole timeout.
    pub async fn refresh_leader(&self, topic: &str, partition: u32) -> Client {
        let key = (topic.to_owned(), partition);
        let (known, floor): (Vec<Client>, Option<i32>) = {
            let routes = self.routes();
            let known = std::iter::once(self.shared.root.clone())
                .chain(routes.nodes.values().cloned())
                .map(|node| self.with_node(node))
                .collect();
            (known, routes.leaders.get(&key).map(|route| route.epoch))
        };
        let request = Request::PartitionStates {
            topic: topic.to_owned(),
        };
        let mut answers: FuturesUnordered<_> = known
            .iter()
            .map(|client| async {
                match tokio::time::timeout(METADATA_TIMEOUT, client.request(&request)).await {
                    Ok(Ok(Response::PartitionStates(states))) => {
                        let state = states.into_iter().find(|s| s.partition == partition)?;
                        Some((client.clone(), state.leader?, state.leader_epoch))
                    }
                    _ => None,
                }
            })
            .collect();
        let mut best: Option<(Client, u64, i32)> = None;
        while let Some(answer) = answers.next().await {
            let Some(answer) = answer else { continue };
            if best.as_ref().is_none_or(|(_, _, epoch)| answer.2 > *epoch) {
                best = Some(answer);
            }
            if best
                .as_ref()
                .zip(floor)
                .is_some_and(|((_, _, e), f)| *e > f)
            {
                break;
            }
        }
        drop(answers);
        let Some((answered_by, leader, epoch)) = best else {
            return self.root();
        };
        // A single node names itself node 0 and has no other nodes.
        if leader == 0 {
            return self.root();
        }
        if !self.routes().addresses.contains_key(&leader) {
            self.learn_nodes(&answered_by).await;
        }
        let mut routes = self.routes();
        let Some(node) = routes.node(leader) else {
            return self.root();
        };
        routes.leaders.insert(
            key,
            Route {
                leader,
                epoch,
                stale: false,
            },
        );
        drop(routes);
        self.with_node(node)
    }

    /// The client for the node coordinating consumer group `group`: the
    /// first node this client knows to answer `FindCoordinator` says which
    /// (each asked for at most [`METADATA_TIMEOUT`], all at once). On a
    /// single node, and when no node answers, it is the client
    /// [`Client::connect`] made.
    pub async fn coordinator(&self, group: &str) -> Client {
        let known: Vec<Client> = std::iter::once(self.shared.root.clone())
            .chain(self.routes().nodes.values().cloned())
            .map(|node| self.with_node(node))
            .collect();
        let request = Request::FindCoordinator {
            group: group.to_owned(),
        };
        let mut answers: FuturesUnordered<_> = known
            .iter()
            .map(|client| async {
                match tokio::time::timeout(METADATA_TIMEOUT, client.request(&request)).await {
                    Ok(Ok(Response::Coordinator { node, .. })) => Some((client.clone(), node)),
                    _ => None,
                }
            })
            .collect();
        let mut found = None;
        while let Some(answer) = answers.next().await {
            if answer.is_some() {
                found = answer;
                break;
            }
        }
        drop(answers);
        let Some((answered_by, node)) = found else {
            return self.root();
        };
        // A single node names itself node 0.
        if node == 0 {
            return self.root();
        }
        if !self.routes().addresses.contains_key(&node) {
            self.learn_nodes(&answered_by).await;
        }
        let found = self.routes().node(node);
        found.map_or_else(|| self.root(), |node| self.with_node(node))
    }

    /// Whether a node of the cluster named the leader of `partition` of
    /// `topic` since it was last forgotten: the topic is in that node's
    /// control state, even where a node has not applied its creation yet.
    pub fn names_leader(&self, topic: &str, partition: u32) -> bool {
        self.routes()
            .leaders
            .get(&(topic.to_owned(), partition))
            .is_some_and(|route| !route.stale)
    }

    /// Marks who leads `partition` of `topic` as unknown, after that node
    /// refused or could not be reached.
    pub fn forget_leader(&self, topic: &str, partition: u32) {
        if let Some(route) = self
            .routes()
            .leaders
            .get_mut(&(topic.to_owned(), partition))
        {
            route.stale = true;
        }
    }

    /// Whether `self` and `other` talk to the same broker connection.
    pub fn same_node(&self, other: &Client) -> bool {
        Arc::ptr_eq(&self.node, &other.node)
    }

    /// Learns every node's address from `from`'s view of the cluster.
    async fn learn_nodes(&self, from: &Client) {
        let Ok(Ok(Response::ClusterStatus(ClusterStatus { nodes, .. }))) =
            tokio::time::timeout(METADATA_TIMEOUT, from.request(&Request::ClusterStatus)).await
        else {
            return;
        };
        let root = &self.shared.root.config;
        let root_remote = self.root().broker();
        let mut routes = self.routes();
        for n in nodes {
            let Ok(broker) = n.address.parse::<BrokerAddr>() else {
                continue;
            };
            routes.addresses.insert(n.id, n.address.clone());
            routes.nodes.entry(n.address).or_insert_with(|| {
                let server_name = match &broker {
                    BrokerAddr::Host { host, .. } => host.clone(),
                    // A node's address is an IP: its certificate names
                    // what the bootstrap broker's does (`localhost` for
                    // the certificates `--cluster-ca` issues).
                    BrokerAddr::Ip(_) => root.server_name.clone(),
                };
                // Where it is until its first connect says.
                let remote = match broker {
                    BrokerAddr::Ip(addr) => addr,
                    BrokerAddr::Host { .. } => root_remote,
                };
                Arc::new(Node {
                    remote: std::sync::Mutex::new(remote),
                    config: ClientConfig {
                        broker,
                        bootstrap: Vec::new(),
                        server_name,
                        connect_timeout: root.connect_timeout.min(NODE_CONNECT_TIMEOUT),
                        ..root.clone()
                    },
                    conn: Mutex::new(None),
                })
            });
        }
    }

    fn root(&self) -> Client {
        self.with_node(self.shared.root.clone())
    }

    fn with_node(&self, node: Arc<Node>) -> Client {
        Client {
            node,
            shared: self.shared.clone(),
        }
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.shared
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Routes {
    fn node(&self, id: u64) -> Option<Arc<Node>> {
        self.nodes.get(self.addresses.get(&id)?).cloned()
    }
}

/// Decodes a response frame and checks it answers `correlation_id`.
pub(crate) fn decode_response(
    body: bytes::Bytes,
    correlation_id: u32,
) -> Result<Response, ClientError> {
    let (header, response) =
        Response::decode(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
    if header.correlation_id != correlation_id && header.correlation_id != 0 {
        return Err(ClientError::Protocol(format!(
            "response for request {} while waiting for {correlation_id}",
            header.correlation_id
        )));
    }
    match response {
        Response::Error { code, message } => Err(ClientError::broker(code, message)),
        other => Ok(other),
    }
}

/// Validates fetched batches (CRC included) and returns their records at or
/// after `floor`.
pub(crate) fn decode_records(
    batches: &bytes::Bytes,
    floor: u64,
) -> Result<Vec<StoredRecord>, ClientError> {
    let mut out = Vec::new();
    for b in batch::split(batches).map_err(|e| ClientError::Protocol(e.to_string()))? {
        let records = batch::records(&b).map_err(|e| ClientError::Protocol(e.to_string()))?;
        out.extend(records.into_iter().filter(|r| r.offset >= floor));
    }
    Ok(out)
}

/// A client UDP socket that can reach `addrs`: dual-stack when any of them
/// is IPv6 (falling back to IPv4 where the host has no IPv6), else IPv4.
fn bind_for(addrs: &[SocketAddr]) -> std::io::Result<quinn::Endpoint> {
    let v4: SocketAddr = "0.0.0.0:0".parse().expect("literal address");
    if addrs.iter().any(SocketAddr::is_ipv6) {
        let v6: SocketAddr = "[::]:0".parse().expect("literal address");
        match quinn::Endpoint::client(v6) {
            Ok(endpoint) => return Ok(endpoint),
            Err(e) if addrs.iter().all(SocketAddr::is_ipv6) => return Err(e),
            Err(_) => {}
        }
    }
    quinn::Endpoint::client(v4)
}

pub(crate) fn unexpected(response: &Response) -> ClientError {
    ClientError::Protocol(format!("unexpected response {response:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<BrokerAddr, BrokerAddrError> {
        s.parse()
    }

    fn host(host: &str, port: u16) -> BrokerAddr {
        BrokerAddr::Host {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn broker_addr_parses_ips_with_and_without_a_port() {
        let ip = |s: &str| BrokerAddr::Ip(s.parse().unwrap());
        assert_eq!(parse("127.0.0.1:9000"), Ok(ip("127.0.0.1:9000")));
        assert_eq!(parse("[::1]:9000"), Ok(ip("[::1]:9000")));
        assert_eq!(parse("127.0.0.1"), Ok(ip("127.0.0.1:7171")));
        assert_eq!(parse("::1"), Ok(ip("[::1]:7171")));
        assert_eq!(parse("[::1]"), Ok(ip("[::1]:7171")));
    }

    #[test]
    fn broker_addr_parses_host_names_with_and_without_a_port() {
        assert_eq!(parse("localhost:7171"), Ok(host("localhost", 7171)));
        assert_eq!(
            parse("broker-1.edge.example"),
            Ok(host("broker-1.edge.example", 7171))
        );
        assert_eq!(parse("b_2:1"), Ok(host("b_2", 1)));
    }

    #[test]
    fn broker_addr_refuses_what_cannot_be_dialled() {
        for bad in [
            "",
            ":7171",
            "localhost:",
            "localhost:0",
            "localhost:65536",
            "localhost:http",
            "a b:7171",
            "host/path:7171",
            "fe80::1:x",
        ] {
            let err = parse(bad).expect_err(bad);
            assert_eq!(err.input, bad);
        }
    }

    #[test]
    fn broker_addr_displays_as_it_parses() {
        for s in ["127.0.0.1:9000", "[::1]:9000", "localhost:7171"] {
            assert_eq!(parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn client_config_server_name_is_the_host_name_or_localhost_for_an_ip() {
        let named = ClientConfig::new(("broker.example", 7171), "ca.pem");
        assert_eq!(named.server_name, "broker.example");
        assert_eq!(named.broker, host("broker.example", 7171));
        let by_ip = ClientConfig::new(SocketAddr::from(([10, 0, 0, 5], 7171)), "ca.pem");
        assert_eq!(by_ip.server_name, "localhost");
        let literal = ClientConfig::new(("127.0.0.1", 7171), "ca.pem");
        assert!(matches!(literal.broker, BrokerAddr::Ip(_)));
        assert_eq!(literal.server_name, "localhost");
    }
}
