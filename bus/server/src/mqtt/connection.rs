//! One MQTT client connection: CONNECT, then publishes into the log,
//! subscriptions fed from it, and the session saved at the end.
//!
//! Acknowledgements keep MQTT's order: a QoS 1 PUBACK (or QoS 2 PUBREC)
//! is sent once the publish is durably committed, after those of every
//! publish received before it, while later publishes are already on their
//! way to the writer, so one connection's publishes share group commits.
//! On their way, the consecutive QoS 1 publishes of one read to one
//! partition travel as one part to that partition's gather task, which
//! merges the parts of every connection into one append.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use edgebus_proto::batch::{self, ProducerStamp, StoredRecord};
use edgebus_proto::frame::{Acks, Position};
use futures::FutureExt;
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::gather::{self, Part, Verdict};
use super::packet::{
    self, Connect, DecodeError, Goodbye, Inbound, Outbound, Publish, PublishRefusal, QoS, Refusal,
    Version, Will,
};
use super::session::{self, PendingRelease, StoredSession, StoredSubscription};
use super::{Door, MqttRefusal, TOPIC_HEADER};
use crate::cmd::produce;
use crate::reader::Reader;

/// How often a persistent session's delivery positions are saved while
/// they change (and always when the connection ends). QoS 1 is at least
/// once: a crash in between redelivers what was acknowledged since.
const SESSION_SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// Bytes of a partition read at most to find retained messages for one
/// subscription, so a subscribe to a long log stays bounded.
const MAX_RETAINED_SCAN_BYTES: u64 = 64 << 20;

/// Payload and topic bytes of consecutive QoS 1 publishes handed to a
/// partition's gather task as one part at most (a single larger publish
/// is a part of its own).
const MAX_RUN_BYTES: usize = gather::MAX_GROUP_BYTES;

/// Bytes one feed reads per store read (a larger batch is read whole).
const FEED_READ_BYTES: u32 = 64 << 10;

/// Feed reads a connection holds before its feeds wait: with
/// [`FEED_READ_BYTES`], what a slow subscriber costs in memory.
const FEED_QUEUE_DEPTH: usize = 2;

/// How long a connection waits for the session it takes over to be saved.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// Decrements the client count however a connection ends.
struct Counted(Arc<Door>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// A connection's byte stream, plain or TLS, and who its client
/// certificate says it is.
pub(super) struct Io {
    rd: ReadHalf,
    wr: WriteHalf,
    identity: Option<String>,
}

impl Io {
    /// Halves of a stream; `identity` is the common name of a verified
    /// client certificate.
    pub(super) fn new(
        rd: impl AsyncRead + Send + Unpin + 'static,
        wr: impl AsyncWrite + Send + Unpin + 'static,
        identity: Option<String>,
    ) -> Io {
        Io {
            rd: Box::new(rd),
            wr: Box::new(wr),
            identity,
        }
    }
}

/// Serves one connection to its end.
pub(super) async fn run(
    door: Arc<Door>,
    id: u64,
    io: Io,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    let clients = door.clients.fetch_add(1, Ordering::AcqRel) + 1;
    let _counted = Counted(door.clone());
    let Io {
        mut rd,
        mut wr,
        identity,
    } = io;
    let mut rbuf = BytesMut::with_capacity(4096);
    let Some(connect) = first_connect(&door, peer, &mut rd, &mut wr, &mut rbuf).await else {
        return;
    };
    let version = connect.version;
    if clients > door.config.max_clients {
        door.refused(MqttRefusal::MaxClients);
        refuse(&mut wr, version, Refusal::ServerBusy).await;
        return;
    }
    if let Err(r) = authenticate(&door, &connect, peer, identity.as_deref()) {
        door.refused(MqttRefusal::NotAuthorized);
        refuse(&mut wr, version, r).await;
        return;
    }
    let persistent = match version {
        Version::V311 => !connect.clean,
        Version::V5 => connect.session_expiry_s.unwrap_or(0) > 0,
    };
    let (client_id, assigned) = if connect.client_id.is_empty() {
        // MQTT 5 lets the broker name a persistent session; 3.1.1 does not.
        if persistent && version == Version::V311 {
            refuse(&mut wr, version, Refusal::BadClientId).await;
            return;
        }
        let made = format!("edgebus-{id}-{}", rand_suffix());
        (made.clone(), Some(made))
    } else {
        (connect.client_id.clone(), None)
    };
    let taking_over = tokio::time::timeout(TAKEOVER_TIMEOUT, door.take_over(&client_id, id)).await;
    let Ok((kicked, turn)) = taking_over else {
        refuse(&mut wr, version, Refusal::Unavailable).await;
        door.leave(&client_id, id);
        return;
    };
    let stored = door.sessions.get(&client_id);
    if connect.clean
        && stored.is_some()
        && let Err(e) = door.sessions.put(&client_id, None).await
    {
        tracing::warn!(client_id, error = %e, "MQTT session could not be discarded");
        refuse(&mut wr, version, Refusal::Unavailable).await;
        door.leave(&client_id, id);
        return;
    }
    let resumed = if connect.clean { None } else { stored };
    let mut conn = Conn::new(door.clone(), &connect, client_id.clone(), persistent, wr);
    let session_present = resumed.is_some();
    // MQTT 5 with a session expiry of 0 resumes a stored session but ends
    // it with the connection.
    let discard = session_present && !persistent;
    if let Some(s) = resumed {
        conn.resume(s).await;
    }
    conn.send(&Outbound::ConnAck {
        session_present,
        assigned_client_id: assigned,
        receive_max: conn.receive_max(),
        max_packet_bytes: door.config.max_packet_bytes,
    });
    tracing::debug!(%peer, client_id, ?version, persistent, "MQTT client connected");
    let end = conn
        .serve(rd, rbuf, connect.keep_alive_s, kicked, stop)
        .await;
    conn.finish(end).await;
    if discard && let Err(e) = door.sessions.put(&client_id, None).await {
        tracing::warn!(client_id, error = %e, "MQTT session could not be discarded");
    }
    door.leave(&client_id, id);
    drop(turn);
}

/// Reads the CONNECT within `mqtt.connect_timeout_ms`; anything else
/// first is counted and closes the connection.
async fn first_connect(
    door: &Door,
    peer: SocketAddr,
    rd: &mut ReadHalf,
    wr: &mut WriteHalf,
    rbuf: &mut BytesMut,
) -> Option<Box<Connect>> {
    let max_bytes = door.config.max_packet_bytes as usize;
    let timeout = Duration::from_millis(door.config.connect_timeout_ms);
    match tokio::time::timeout(timeout, read_connect(rd, rbuf, max_bytes)).await {
        Err(_) => {
            tracing::debug!(%peer, "MQTT connection sent no CONNECT in time");
            door.refused(MqttRefusal::ConnectTimeout);
            None
        }
        Ok(Err(ConnectFailure::Closed)) => None,
        Ok(Err(ConnectFailure::Decode(e))) => {
            tracing::debug!(%peer, error = %e, "MQTT CONNECT refused");
            if let DecodeError::TooLarge { .. } = e {
                door.refused(MqttRefusal::MaxPacketBytes);
            } else {
                door.refused(MqttRefusal::Malformed);
            }
            if let DecodeError::UnsupportedVersion(_) = e {
                // 3.1.1 says how to refuse a version it does not know.
                refuse(wr, Version::V311, Refusal::UnsupportedVersion).await;
            }
            None
        }
        Ok(Ok(c)) => Some(c),
    }
}

/// A short random suffix for assigned client ids.
fn rand_suffix() -> String {
    let mut bytes = [0u8; 6];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    hex::encode(bytes)
}

enum ConnectFailure {
    Closed,
    Decode(DecodeError),
}

async fn read_connect(
    rd: &mut ReadHalf,
    rbuf: &mut BytesMut,
    max_bytes: usize,
) -> Result<Box<Connect>, ConnectFailure> {
    loop {
        match packet::decode(rbuf, None, max_bytes) {
            Ok(Some(Inbound::Connect(c))) => return Ok(c),
            Ok(Some(_)) => return Err(ConnectFailure::Decode(DecodeError::NotConnect)),
            Ok(None) => {}
            Err(e) => return Err(ConnectFailure::Decode(e)),
        }
        match rd.read_buf(rbuf).await {
            Ok(0) | Err(_) => return Err(ConnectFailure::Closed),
            Ok(_) => {}
        }
    }
}

/// Sends a refusing CONNACK and closes.
async fn refuse(wr: &mut WriteHalf, version: Version, refusal: Refusal) {
    let mut buf = BytesMut::new();
    if packet::encode(&Outbound::ConnRefused(refusal), version, &mut buf).is_ok() {
        let _ = wr.write_all(&buf).await;
    }
    let _ = wr.shutdown().await;
}

/// Who may connect: a client whose certificate the TLS handshake
/// verified, as the user its common name names (a username, if given,
/// must be that name); a known user with the right password; without a
/// username, anyone where anonymous clients are allowed (by default only
/// from a loopback address).
fn authenticate(
    door: &Door,
    connect: &Connect,
    peer: SocketAddr,
    identity: Option<&str>,
) -> Result<(), Refusal> {
    if let Some(name) = identity {
        return match &connect.login {
            Some((user, _)) if user != name => Err(Refusal::NotAuthorized),
            _ => Ok(()),
        };
    }
    match &connect.login {
        Some((name, password)) => {
            let user = door.config.users.iter().find(|u| &u.name == name);
            match user {
                Some(u) if u.verify(password) => Ok(()),
                _ => Err(Refusal::BadCredentials),
            }
        }
        None => {
            let anonymous = door
                .config
                .allow_anonymous
                .unwrap_or_else(|| peer.ip().is_loopback());
            if anonymous {
                Ok(())
            } else {
                Err(Refusal::NotAuthorized)
            }
        }
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client sent DISCONNECT.
    Disconnected { with_will: bool },
    /// The connection dropped.
    Lost,
    /// The broker ends it, telling an MQTT 5 client why.
    Goodbye(Goodbye),
    /// A 3.1.1 client whose publish was refused: that version has no
    /// negative acknowledgement, so the connection is closed.
    Refused,
}

impl End {
    fn publishes_will(self) -> bool {
        match self {
            End::Disconnected { with_will } => with_will,
            End::Goodbye(Goodbye::ShuttingDown) => false,
            End::Lost | End::Goodbye(_) | End::Refused => true,
        }
    }
}

/// A QoS 1 or 2 publish's acknowledgement, once its append is decided.
struct AckDone {
    /// The publishes' packet ids, in the order they came.
    pkids: Vec<u16>,
    qos: QoS,
    result: Result<(), PublishRefusal>,
}

type AckFuture = Pin<Box<dyn Future<Output = AckDone> + Send>>;

/// Consecutive QoS 1 publishes to one partition, handed over as one part.
struct Run {
    target: (String, u32),
    publishes: Vec<Publish>,
    /// Payload and topic bytes so far.
    bytes: usize,
}

/// A QoS 2 publish awaiting its PUBREL.
struct Released {
    topic: String,
    partition: u32,
    sequence: i32,
    /// Its append is acknowledged.
    stored: bool,
}

/// A subscription.
struct Sub {
    filter: String,
    qos: QoS,
    topic: String,
}

/// Records a feed read from one partition, and where it goes on.
struct Delivery {
    topic: String,
    partition: u32,
    records: Vec<StoredRecord>,
    next: u64,
}

/// What waits to be delivered, in order.
enum Queued {
    Record {
        topic: String,
        partition: u32,
        record: StoredRecord,
        /// A retained message sent on subscribe, not part of the live feed.
        retained: bool,
    },
    Advance {
        topic: String,
        partition: u32,
        next: u64,
    },
}

struct Conn {
    door: Arc<Door>,
    version: Version,
    client_id: String,
    persistent: bool,
    wr: WriteHalf,
    wbuf: BytesMut,
    /// Acknowledgements in the order their publishes arrived.
    acks: FuturesOrdered<AckFuture>,
    /// QoS 1 publishes not yet acknowledged.
    qos1_pending: usize,
    /// QoS 2 publishes awaiting PUBREL, by packet id.
    qos2: HashMap<u16, Released>,
    subs: Vec<Sub>,
    feeds: HashMap<(String, u32), tokio::task::JoinHandle<()>>,
    deliveries_tx: mpsc::Sender<Delivery>,
    deliveries_rx: mpsc::Receiver<Delivery>,
    queue: VecDeque<Queued>,
    /// Per fed partition, the offset after the last record handled.
    next: HashMap<(String, u32), u64>,
    /// QoS 1 deliveries awaiting PUBACK, with where they came from (none
    /// for retained messages).
    outbound: BTreeMap<u16, Option<(String, u32, u64)>>,
    next_pkid: u16,
    producer_id: Option<i64>,
    sequences: HashMap<(String, u32), i32>,
    /// The gather task of each partition published to.
    gathers: HashMap<(String, u32), mpsc::Sender<Part>>,
    will: Option<Will>,
    /// Positions moved since the session was last saved.
    dirty: bool,
}

impl Conn {
    fn new(
        door: Arc<Door>,
        connect: &Connect,
        client_id: String,
        persistent: bool,
        wr: WriteHalf,
    ) -> Conn {
        let (deliveries_tx, deliveries_rx) = mpsc::channel(FEED_QUEUE_DEPTH);
        Conn {
            door,
            version: connect.version,
            client_id,
            persistent,
            wr,
            wbuf: BytesMut::with_capacity(4096),
            acks: FuturesOrdered::new(),
            qos1_pending: 0,
            qos2: HashMap::new(),
            subs: Vec::new(),
            feeds: HashMap::new(),
            deliveries_tx,
            deliveries_rx,
            queue: VecDeque::new(),
            next: HashMap::new(),
            outbound: BTreeMap::new(),
            next_pkid: 1,
            producer_id: None,
            sequences: HashMap::new(),
            gathers: HashMap::new(),
            will: connect.will.clone(),
            dirty: false,
        }
    }

    fn receive_max(&self) -> u16 {
        // A QoS 2 retransmission after a restart is recognised only
        // within the partition engine's dedup window.
        let window = edgebus_core::producer::DEDUP_WINDOW as u16;
        self.door.config.max_inflight_per_client.clamp(1, window)
    }

    fn send(&mut self, packet: &Outbound) {
        if let Err(e) = packet::encode(packet, self.version, &mut self.wbuf) {
            tracing::warn!(client_id = self.client_id, error = %e, "MQTT packet not sent");
        }
    }

    async fn flush(&mut self) -> Result<(), End> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let written = self.wr.write_all(&self.wbuf).await;
        self.wbuf.clear();
        written.map_err(|_| End::Lost)
    }

    async fn serve(
        &mut self,
        mut rd: ReadHalf,
        mut rbuf: BytesMut,
        keep_alive_s: u16,
        mut kicked: oneshot::Receiver<()>,
        mut stop: watch::Receiver<bool>,
    ) -> End {
        // MQTT: the server closes a connection silent for 1.5 keep-alives.
        let keep_alive =
            (keep_alive_s > 0).then(|| Duration::from_millis(keep_alive_s as u64 * 1500));
        let mut heard = Instant::now();
        let mut save = tokio::time::interval(SESSION_SAVE_INTERVAL);
        // Clients send on without waiting for CONNACK: packets may have
        // arrived with the CONNECT.
        if let Err(end) = self.handle_buffered(&mut rbuf).await {
            return end;
        }
        loop {
            // While its publishes wait unread, a client may be blocked
            // writing them and not reading: deliveries wait too, so that
            // neither side waits on a full socket for good (acks, which
            // end the wait, are a few bytes each).
            let waiting = self.waits_for_room(&rbuf);
            if !waiting {
                self.pump();
            }
            if let Err(end) = self.flush().await {
                return end;
            }
            // A client waiting for room has sent what is left unread: it
            // is not silent.
            let silent_until = keep_alive.filter(|_| !waiting).map(|k| heard + k);
            let room = self.outbound.len() < self.receive_max() as usize;
            tokio::select! {
                read = rd.read_buf(&mut rbuf), if !waiting => match read {
                    Ok(0) | Err(_) => return End::Lost,
                    Ok(_) => {
                        heard = Instant::now();
                        if let Err(end) = self.handle_buffered(&mut rbuf).await {
                            return end;
                        }
                    }
                },
                Some(done) = self.acks.next(), if !self.acks.is_empty() => {
                    if let Err(end) = self.acknowledge(done) {
                        return end;
                    }
                    // One group commit answers many publishes: send every
                    // acknowledgement that is ready in one write.
                    while let Some(Some(done)) = self.acks.next().now_or_never() {
                        if let Err(end) = self.acknowledge(done) {
                            return end;
                        }
                    }
                    if waiting {
                        // What it sent during the wait is heard now.
                        heard = Instant::now();
                        if let Err(end) = self.handle_buffered(&mut rbuf).await {
                            return end;
                        }
                    }
                }
                Some(d) = self.deliveries_rx.recv(), if self.queue.is_empty() && room && !waiting => {
                    for record in d.records {
                        self.queue.push_back(Queued::Record {
                            topic: d.topic.clone(),
                            partition: d.partition,
                            record,
                            retained: false,
                        });
                    }
                    self.queue.push_back(Queued::Advance { topic: d.topic, partition: d.partition, next: d.next });
                }
                () = sleep_until(silent_until) => return End::Goodbye(Goodbye::KeepAliveTimeout),
                _ = save.tick(), if self.persistent && self.dirty => self.save().await,
                _ = &mut kicked => return End::Goodbye(Goodbye::SessionTakenOver),
                _ = stop.changed() => return End::Goodbye(Goodbye::ShuttingDown),
            }
        }
    }

    /// Handles every whole packet in `rbuf`. Consecutive QoS 1
    /// publishes to one partition become one part (a [`Run`]) for its
    /// gather task, so a client that pipelines costs one hand-over, not
    /// one each.
    async fn handle_buffered(&mut self, rbuf: &mut BytesMut) -> Result<(), End> {
        let max_bytes = self.door.config.max_packet_bytes as usize;
        let mut run: Option<Run> = None;
        // The last MQTT topic routed and where it went: a device publishes
        // to the same topic again and again, and within one read the
        // mapping and the partition count stay what they were.
        let mut routed: Option<(String, (String, u32))> = None;
        loop {
            if self.waits_for_room(rbuf) {
                return self.flush_run(run.take()).await;
            }
            match packet::decode(rbuf, Some(self.version), max_bytes) {
                Ok(Some(Inbound::Publish(p))) if p.qos == QoS::AtLeastOnce => {
                    let target = match routed {
                        Some((ref topic, ref target)) if *topic == p.topic => {
                            self.admit(&p)?;
                            target
                        }
                        _ => {
                            let Some(target) = self.route(&p)? else {
                                continue;
                            };
                            &routed.insert((p.topic.clone(), target)).1
                        }
                    };
                    self.qos1_pending += 1;
                    match run.as_mut() {
                        Some(r) if r.target == *target && r.bytes < MAX_RUN_BYTES => {
                            r.bytes += gather::publish_bytes(&p);
                            r.publishes.push(p);
                        }
                        _ => {
                            let target = target.clone();
                            self.flush_run(run.take()).await?;
                            run = Some(Run {
                                target,
                                bytes: gather::publish_bytes(&p),
                                publishes: vec![p],
                            });
                        }
                    }
                }
                Ok(Some(p)) => {
                    self.flush_run(run.take()).await?;
                    self.handle(p).await?;
                }
                Ok(None) => return self.flush_run(run.take()).await,
                Err(DecodeError::TooLarge { .. }) => {
                    self.door.refused(MqttRefusal::MaxPacketBytes);
                    return Err(End::Goodbye(Goodbye::PacketTooLarge));
                }
                Err(e) => {
                    tracing::debug!(client_id = self.client_id, error = %e, "MQTT malformed packet");
                    self.door.refused(MqttRefusal::Malformed);
                    return Err(End::Goodbye(Goodbye::MalformedPacket));
                }
            }
        }
    }

    async fn handle(&mut self, p: Inbound) -> Result<(), End> {
        match p {
            Inbound::Publish(p) => self.publish(p).await,
            Inbound::PubAck(pkid) => {
                if self.outbound.remove(&pkid).is_some() {
                    self.dirty = true;
                }
                Ok(())
            }
            Inbound::PubRel(pkid) => {
                if self.qos2.remove(&pkid).is_some() && self.persistent {
                    // The packet id may be reused once PUBCOMP is out: the
                    // stored session must no longer call it pending.
                    self.save().await;
                }
                self.send(&Outbound::PubComp(pkid));
                Ok(())
            }
            Inbound::Subscribe { pkid, filters } => {
                self.subscribe(pkid, filters).await;
                Ok(())
            }
            Inbound::Unsubscribe { pkid, filters } => {
                self.unsubscribe(pkid, &filters).await;
                Ok(())
            }
            Inbound::PingReq => {
                self.send(&Outbound::PingResp);
                Ok(())
            }
            Inbound::Disconnect { with_will } => Err(End::Disconnected { with_will }),
            Inbound::Connect(_) | Inbound::PubRec(_) | Inbound::PubComp(_) => {
                Err(End::Goodbye(Goodbye::ProtocolError))
            }
            Inbound::Unexpected(kind) => {
                tracing::debug!(
                    client_id = self.client_id,
                    kind,
                    "MQTT packet a client may not send"
                );
                Err(End::Goodbye(Goodbye::ProtocolError))
            }
        }
    }

    /// Refuses a publish: MQTT 5 says why, 3.1.1 closes the connection.
    fn refuse_publish(&mut self, p: &Publish, why: PublishRefusal) -> Result<(), End> {
        if self.version == Version::V311 {
            return Err(End::Refused);
        }
        match p.qos {
            QoS::AtMostOnce if why == PublishRefusal::TopicNameInvalid => {
                Err(End::Goodbye(Goodbye::TopicNameInvalid))
            }
            QoS::AtMostOnce => Ok(()),
            QoS::AtLeastOnce => {
                self.send(&Outbound::PubAck(p.pkid, Some(why)));
                Ok(())
            }
            QoS::ExactlyOnce => {
                self.send(&Outbound::PubRec(p.pkid, Some(why)));
                Ok(())
            }
        }
    }

    /// MQTT 3.1.1 has no receive maximum to tell a client, so one past
    /// ours is not cut off: its next QoS 1 or 2 publish is left unread,
    /// and the socket with it, until a commit frees room. Only while QoS 1
    /// acknowledgements are pending, which arrive without the client's
    /// help; a client that fills the window with QoS 2 exchanges it never
    /// releases is still disconnected by [`Self::admit`].
    fn waits_for_room(&self, rbuf: &[u8]) -> bool {
        const PUBLISH: u8 = 3;
        self.version == Version::V311
            && self.qos1_pending > 0
            && self.qos1_pending + self.qos2.len() >= self.receive_max() as usize
            && rbuf
                .first()
                .is_some_and(|&b| b >> 4 == PUBLISH && (b >> 1) & 3 != 0)
    }

    /// The limits every publish is checked against: no topic aliases,
    /// and no more unacknowledged than the receive maximum.
    fn admit(&mut self, p: &Publish) -> Result<(), End> {
        if p.topic_alias.is_some() {
            return Err(End::Goodbye(Goodbye::TopicAliasInvalid));
        }
        if p.qos != QoS::AtMostOnce
            && !self.qos2.contains_key(&p.pkid)
            && self.qos1_pending + self.qos2.len() >= self.receive_max() as usize
        {
            self.door.refused(MqttRefusal::MaxInflight);
            return Err(End::Goodbye(Goodbye::ReceiveMaximumExceeded));
        }
        Ok(())
    }

    /// Where a publish goes, checking the limits and the mapping first.
    /// `Ok(None)`: refused, and the client told so.
    fn route(&mut self, p: &Publish) -> Result<Option<(String, u32)>, End> {
        self.admit(p)?;
        let door = self.door.clone();
        let Some(mapping) = session::mapping_for_topic(&door.config.map, &p.topic) else {
            self.door.refused(MqttRefusal::UnmappedTopic);
            tracing::debug!(
                client_id = self.client_id,
                topic = p.topic,
                "MQTT publish to an unmapped topic"
            );
            return self
                .refuse_publish(p, PublishRefusal::TopicNameInvalid)
                .map(|()| None);
        };
        let partitions = match door.broker.topics.spec(&mapping.topic) {
            Ok(s) => s.partitions,
            Err(e) => {
                tracing::warn!(topic = p.topic, error = %e, "MQTT publish to a mapped topic that does not exist");
                return self
                    .refuse_publish(p, PublishRefusal::Unspecified)
                    .map(|()| None);
            }
        };
        let partition =
            edgebus_proto::partitioner::partition_for_key(p.topic.as_bytes(), partitions);
        Ok(Some((mapping.topic.clone(), partition)))
    }

    /// A QoS 0 or 2 publish (QoS 1 ones go through [`Run`]s).
    async fn publish(&mut self, p: Publish) -> Result<(), End> {
        let Some(target) = self.route(&p)? else {
            return Ok(());
        };
        if p.qos == QoS::ExactlyOnce {
            return self.publish_exactly_once(p, target).await;
        }
        let part = Part::Alone {
            publish: p,
            stamp: ProducerStamp::NONE,
            acks: Acks::None,
            done: None,
        };
        self.hand_over(target, part).await;
        Ok(())
    }

    /// Hands a part to its partition's gather task. If that task is gone,
    /// the part's answer is dropped with it, which refuses its publishes.
    async fn hand_over(&mut self, target: (String, u32), part: Part) {
        let tx = match self.gathers.get(&target) {
            Some(tx) => tx,
            None => {
                let tx = self.door.gather(&target.0, target.1);
                self.gathers.entry(target).or_insert(tx)
            }
        };
        let _ = tx.send(part).await;
    }

    /// Hands a run of QoS 1 publishes over as one part, acknowledged
    /// together once it is durable.
    async fn flush_run(&mut self, run: Option<Run>) -> Result<(), End> {
        let Some(run) = run else {
            return Ok(());
        };
        let pkids: Vec<u16> = run.publishes.iter().map(|p| p.pkid).collect();
        let (done, verdict) = oneshot::channel();
        let part = Part::Shared {
            publishes: run.publishes,
            done,
        };
        self.hand_over(run.target, part).await;
        self.acks
            .push_back(ack_when(verdict, pkids, QoS::AtLeastOnce));
        Ok(())
    }

    /// QoS 2: each new packet id gets the next producer sequence of its
    /// partition, saved with a persistent session before the append, so a
    /// retransmission (before PUBREL, even after a restart) is appended
    /// with the same sequence and found to be a duplicate.
    async fn publish_exactly_once(&mut self, p: Publish, target: (String, u32)) -> Result<(), End> {
        if let Some(r) = self.qos2.get(&p.pkid) {
            if r.stored {
                self.send(&Outbound::PubRec(p.pkid, None));
                return Ok(());
            }
            if r.topic != target.0 || r.partition != target.1 {
                // Another message under a packet id still awaiting PUBREL.
                return self.refuse_publish(&p, PublishRefusal::PacketIdInUse);
            }
        } else {
            if self.producer_id.is_none() {
                match self.door.sessions.allocate_producer_id().await {
                    Ok(id) => self.producer_id = Some(id),
                    Err(e) => {
                        tracing::warn!(error = %e, "MQTT QoS 2: no producer id");
                        return self.refuse_publish(&p, PublishRefusal::Unspecified);
                    }
                }
            }
            let next = self.sequences.entry(target.clone()).or_insert(0);
            let sequence = *next;
            *next = if sequence == i32::MAX {
                0
            } else {
                sequence + 1
            };
            self.qos2.insert(
                p.pkid,
                Released {
                    topic: target.0.clone(),
                    partition: target.1,
                    sequence,
                    stored: false,
                },
            );
            if self.persistent {
                self.save().await;
            }
        }
        let (sequence, producer_id) = match (self.qos2.get(&p.pkid), self.producer_id) {
            (Some(r), Some(id)) => (r.sequence, id),
            _ => return self.refuse_publish(&p, PublishRefusal::Unspecified),
        };
        let stamp = ProducerStamp {
            producer_id,
            producer_epoch: 0,
            base_sequence: sequence,
        };
        let pkid = p.pkid;
        let (done, verdict) = oneshot::channel();
        let part = Part::Alone {
            publish: p,
            stamp,
            acks: Acks::Durable,
            done: Some(done),
        };
        self.hand_over(target, part).await;
        // A refusal comes back as this acknowledgement, which then
        // forgets the packet id.
        self.acks
            .push_back(ack_when(verdict, vec![pkid], QoS::ExactlyOnce));
        Ok(())
    }

    fn acknowledge(&mut self, done: AckDone) -> Result<(), End> {
        if done.result.is_err() && self.version == Version::V311 {
            return Err(End::Refused);
        }
        for pkid in done.pkids {
            match (done.qos, done.result) {
                (QoS::ExactlyOnce, Ok(())) => {
                    if let Some(r) = self.qos2.get_mut(&pkid) {
                        r.stored = true;
                    }
                    self.send(&Outbound::PubRec(pkid, None));
                }
                (QoS::ExactlyOnce, Err(why)) => {
                    self.qos2.remove(&pkid);
                    self.send(&Outbound::PubRec(pkid, Some(why)));
                }
                (_, result) => {
                    self.qos1_pending -= 1;
                    self.send(&Outbound::PubAck(pkid, result.err()));
                }
            }
        }
        Ok(())
    }

    async fn subscribe(&mut self, pkid: u16, filters: Vec<(String, QoS)>) {
        let door = self.door.clone();
        let mut granted = Vec::with_capacity(filters.len());
        let mut retained = Vec::new();
        for (filter, qos) in filters {
            let mapping = (packet::valid_filter(&filter) && !filter.starts_with("$share/"))
                .then(|| session::mapping_for_filter(&door.config.map, &filter))
                .flatten();
            let Some(mapping) = mapping else {
                granted.push(None);
                continue;
            };
            let qos = qos.min(QoS::AtLeastOnce);
            if let Some(existing) = self.subs.iter_mut().find(|s| s.filter == filter) {
                existing.qos = qos;
            } else if self.subs.len() >= door.config.max_subscriptions_per_client {
                door.refused(MqttRefusal::MaxSubscriptions);
                granted.push(None);
                continue;
            } else {
                self.subs.push(Sub {
                    filter: filter.clone(),
                    qos,
                    topic: mapping.topic.clone(),
                });
            }
            let starts = match self.start_feeds(&mapping.topic, None).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(topic = mapping.topic, error = %e, "MQTT subscription cannot be fed");
                    self.subs.retain(|s| s.filter != filter);
                    granted.push(None);
                    continue;
                }
            };
            if mapping.retain {
                let reader = door.broker.reader.clone();
                retained.extend(retained_records(reader, &mapping.topic, &filter, &starts).await);
            }
            granted.push(Some(qos));
        }
        self.dirty = true;
        if self.persistent {
            // Saved before SUBACK: a restart keeps the subscription and
            // where its feed starts.
            self.save().await;
        }
        self.send(&Outbound::SubAck(pkid, granted));
        self.queue.extend(retained);
    }

    async fn unsubscribe(&mut self, pkid: u16, filters: &[String]) {
        self.subs.retain(|s| !filters.contains(&s.filter));
        let fed: Vec<(String, u32)> = self.feeds.keys().cloned().collect();
        for key in fed {
            if !self.subs.iter().any(|s| s.topic == key.0) {
                if let Some(task) = self.feeds.remove(&key) {
                    task.abort();
                }
                self.next.remove(&key);
            }
        }
        self.dirty = true;
        if self.persistent {
            self.save().await;
        }
        self.send(&Outbound::UnsubAck(pkid, filters.len()));
    }

    /// Starts a feed on every partition of `topic` not yet fed, from
    /// `positions` (a resumed session's) or else the high watermark.
    /// Returns where each partition's feed starts.
    async fn start_feeds(
        &mut self,
        topic: &str,
        positions: Option<&[u64]>,
    ) -> Result<Vec<u64>, crate::topics::UnknownTopic> {
        let spec = self.door.broker.topics.spec(topic)?;
        let mut starts = Vec::with_capacity(spec.partitions as usize);
        for partition in 0..spec.partitions {
            let key = (topic.to_owned(), partition);
            if let Some(next) = self.next.get(&key) {
                starts.push(*next);
                continue;
            }
            let reader = &self.door.broker.reader;
            let start = match positions.and_then(|p| p.get(partition as usize)) {
                Some(p) => reader
                    .resolve(topic, partition, Position::Offset(*p))
                    .await
                    // Retention may have deleted what was not delivered.
                    .unwrap_or_else(|_| reader.high_watermark(topic, partition)),
                None => reader.high_watermark(topic, partition),
            };
            self.next.insert(key.clone(), start);
            let feed = feed(
                self.door.clone(),
                topic.to_owned(),
                partition,
                start,
                self.deliveries_tx.clone(),
            );
            self.feeds.insert(key, tokio::spawn(feed));
            starts.push(start);
        }
        Ok(starts)
    }

    /// Sends queued deliveries while the client has room for them.
    fn pump(&mut self) {
        let limit = self.receive_max() as usize;
        while self.outbound.len() < limit {
            let Some(item) = self.queue.pop_front() else {
                break;
            };
            match item {
                Queued::Advance {
                    topic,
                    partition,
                    next,
                } => {
                    if let Some(n) = self.next.get_mut(&(topic, partition)) {
                        *n = (*n).max(next);
                        self.dirty = true;
                    }
                }
                Queued::Record {
                    topic,
                    partition,
                    record,
                    retained,
                } => self.deliver(topic, partition, record, retained),
            }
        }
    }

    fn deliver(&mut self, topic: String, partition: u32, record: StoredRecord, retained: bool) {
        let offset = record.offset;
        let qos = mqtt_topic(&record).and_then(|t| {
            let qos = self
                .subs
                .iter()
                .filter(|s| s.topic == topic && packet::matches(&t, &s.filter))
                .map(|s| s.qos)
                .max()?;
            Some((t, qos))
        });
        if let Some((mqtt_topic, qos)) = qos {
            let pkid = match qos {
                QoS::AtMostOnce => 0,
                _ => {
                    let pkid = self.free_pkid();
                    let from = (!retained).then(|| (topic.clone(), partition, offset));
                    self.outbound.insert(pkid, from);
                    pkid
                }
            };
            let user_properties = match self.version {
                Version::V5 => record
                    .headers
                    .iter()
                    .filter(|h| h.key != TOPIC_HEADER)
                    .map(|h| {
                        (
                            h.key.clone(),
                            String::from_utf8_lossy(&h.value).into_owned(),
                        )
                    })
                    .collect(),
                Version::V311 => Vec::new(),
            };
            self.send(&Outbound::Publish(Publish {
                topic: mqtt_topic,
                payload: record.value,
                qos,
                pkid,
                dup: false,
                retain: retained,
                user_properties,
                topic_alias: None,
            }));
        }
        if !retained && let Some(n) = self.next.get_mut(&(topic, partition)) {
            *n = (*n).max(offset + 1);
            self.dirty = true;
        }
    }

    fn free_pkid(&mut self) -> u16 {
        // `outbound` holds fewer ids than there are, so this ends.
        loop {
            let pkid = self.next_pkid;
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.outbound.contains_key(&pkid) {
                return pkid;
            }
        }
    }

    /// Restores a stored session: its subscriptions, feeds from its
    /// positions, and its QoS 2 state.
    async fn resume(&mut self, s: StoredSession) {
        self.producer_id = s.producer_id;
        for (topic, seqs) in &s.sequences {
            for (partition, seq) in seqs.iter().enumerate() {
                self.sequences
                    .insert((topic.clone(), partition as u32), *seq);
            }
        }
        for (topic, pending) in &s.pending_release {
            for r in pending {
                self.qos2.insert(
                    r.pkid,
                    Released {
                        topic: topic.clone(),
                        partition: r.partition,
                        sequence: r.sequence,
                        stored: false,
                    },
                );
            }
        }
        let door = self.door.clone();
        for (filter, qos) in s.filters() {
            let Some(mapping) = session::mapping_for_filter(&door.config.map, &filter) else {
                tracing::warn!(
                    client_id = self.client_id,
                    filter,
                    "stored MQTT subscription no longer mapped: dropped"
                );
                continue;
            };
            self.subs.push(Sub {
                filter,
                qos,
                topic: mapping.topic.clone(),
            });
            let positions = s.positions.get(&mapping.topic).map(Vec::as_slice);
            if let Err(e) = self.start_feeds(&mapping.topic, positions).await {
                tracing::warn!(topic = mapping.topic, error = %e, "stored MQTT subscription cannot be fed");
            }
        }
    }

    /// The session as stored: each fed partition's position is its oldest
    /// unacknowledged delivery, else the next record to handle.
    fn stored(&self) -> StoredSession {
        let mut s = StoredSession::new();
        s.subscriptions = self
            .subs
            .iter()
            .map(|sub| StoredSubscription {
                filter: sub.filter.clone(),
                qos: sub.qos as u8,
            })
            .collect();
        let mut oldest: HashMap<(&str, u32), u64> = HashMap::new();
        for (topic, partition, offset) in self.outbound.values().flatten() {
            let e = oldest
                .entry((topic.as_str(), *partition))
                .or_insert(*offset);
            *e = (*e).min(*offset);
        }
        for ((topic, partition), next) in &self.next {
            let at = oldest
                .get(&(topic.as_str(), *partition))
                .copied()
                .unwrap_or(*next);
            set_at(
                s.positions.entry(topic.clone()).or_default(),
                *partition,
                at,
            );
        }
        s.producer_id = self.producer_id;
        for ((topic, partition), seq) in &self.sequences {
            set_at(
                s.sequences.entry(topic.clone()).or_default(),
                *partition,
                *seq,
            );
        }
        for (pkid, r) in &self.qos2 {
            s.pending_release
                .entry(r.topic.clone())
                .or_default()
                .push(PendingRelease {
                    pkid: *pkid,
                    partition: r.partition,
                    sequence: r.sequence,
                });
        }
        s
    }

    async fn save(&mut self) {
        if !self.persistent {
            return;
        }
        let stored = self.stored();
        match self.door.sessions.put(&self.client_id, Some(stored)).await {
            Ok(()) => self.dirty = false,
            Err(e) => {
                tracing::warn!(client_id = self.client_id, error = %e, "MQTT session not saved")
            }
        }
    }

    /// Ends the connection: says why (MQTT 5), publishes the will if the
    /// end calls for it, stops the feeds and saves the session.
    async fn finish(&mut self, end: End) {
        if let End::Goodbye(g) = end {
            self.send(&Outbound::Disconnect(g));
        }
        let _ = self.flush().await;
        let _ = self.wr.shutdown().await;
        for (_, task) in self.feeds.drain() {
            task.abort();
        }
        if end.publishes_will()
            && let Some(will) = self.will.take()
        {
            self.publish_will(will).await;
        }
        if self.persistent {
            self.save().await;
        }
        tracing::debug!(client_id = self.client_id, ?end, "MQTT client gone");
    }

    async fn publish_will(&mut self, will: Will) {
        let p = Publish {
            topic: will.topic,
            payload: will.payload,
            qos: will.qos.min(QoS::AtLeastOnce),
            pkid: 0,
            dup: false,
            retain: false,
            user_properties: will.user_properties,
            topic_alias: None,
        };
        let Some(mapping) = session::mapping_for_topic(&self.door.config.map, &p.topic) else {
            self.door.refused(MqttRefusal::UnmappedTopic);
            return;
        };
        let Ok(spec) = self.door.broker.topics.spec(&mapping.topic) else {
            return;
        };
        let partition =
            edgebus_proto::partitioner::partition_for_key(p.topic.as_bytes(), spec.partitions);
        let target = (mapping.topic.clone(), partition);
        let acks = if p.qos == QoS::AtMostOnce {
            Acks::None
        } else {
            Acks::Durable
        };
        match gather::produce_to(
            &self.door.broker,
            &target.0,
            target.1,
            acks,
            gather::record_batch(std::iter::once(&p), ProducerStamp::NONE),
        )
        .await
        {
            Ok(pending) if acks != Acks::None => {
                if let Err(e) = produce::acknowledged(pending).await {
                    tracing::warn!(topic = p.topic, error = %e, "MQTT will not stored");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(topic = p.topic, error = %e, "MQTT will not stored"),
        }
    }
}

/// The last record of each MQTT topic matching `filter` below `ends`,
/// read within [`MAX_RETAINED_SCAN_BYTES`] per partition.
async fn retained_records(reader: Reader, topic: &str, filter: &str, ends: &[u64]) -> Vec<Queued> {
    let mut out = Vec::new();
    for (partition, end) in ends.iter().enumerate() {
        let partition = partition as u32;
        let Ok(mut at) = reader.resolve(topic, partition, Position::Earliest).await else {
            continue;
        };
        let mut last: HashMap<String, StoredRecord> = HashMap::new();
        let mut scanned = 0u64;
        while at < *end && scanned < MAX_RETAINED_SCAN_BYTES {
            let Ok(read) = reader.read_at(topic, partition, at, FEED_READ_BYTES).await else {
                break;
            };
            if read.batches.is_empty() {
                break;
            }
            for b in &read.batches {
                scanned += b.len() as u64;
                for r in batch::records(b).unwrap_or_default() {
                    at = at.max(r.offset + 1);
                    if r.offset >= *end {
                        continue;
                    }
                    if let Some(t) = mqtt_topic(&r)
                        && packet::matches(&t, filter)
                    {
                        last.insert(t, r);
                    }
                }
            }
        }
        let mut records: Vec<_> = last.into_values().collect();
        records.sort_by_key(|r| r.offset);
        out.extend(records.into_iter().map(|record| Queued::Record {
            topic: topic.to_owned(),
            partition,
            record,
            retained: true,
        }));
    }
    out
}

fn set_at<T: Copy + Default>(v: &mut Vec<T>, index: u32, value: T) {
    let index = index as usize;
    if v.len() <= index {
        v.resize(index + 1, T::default());
    }
    v[index] = value;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The acknowledgement of publishes once their gather task has the
/// writer's answer (a task that dropped the part refuses them).
fn ack_when(verdict: oneshot::Receiver<Verdict>, pkids: Vec<u16>, qos: QoS) -> AckFuture {
    Box::pin(async move {
        let result = verdict.await.unwrap_or(Err(PublishRefusal::Unspecified));
        AckDone { pkids, qos, result }
    })
}

/// A record's MQTT topic: its `mqtt-topic` header, else its key, when
/// either is a valid topic name.
fn mqtt_topic(r: &StoredRecord) -> Option<String> {
    let raw = r
        .headers
        .iter()
        .find(|h| h.key == TOPIC_HEADER)
        .map(|h| &h.value)
        .or(r.key.as_ref())?;
    let topic = std::str::from_utf8(raw).ok()?;
    packet::valid_topic(topic).then(|| topic.to_owned())
}

/// Reads one partition from `from` on and hands the records to the
/// connection, waiting for the writer to publish more.
async fn feed(
    door: Arc<Door>,
    topic: String,
    partition: u32,
    from: u64,
    tx: mpsc::Sender<Delivery>,
) {
    let reader = &door.broker.reader;
    let mut log_end = door
        .broker
        .subscriptions
        .notifier()
        .watch(&topic, partition);
    let mut cursor = from;
    loop {
        let read = match reader
            .read_at(&topic, partition, cursor, FEED_READ_BYTES)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(topic, partition, error = %e, "MQTT feed stopped");
                return;
            }
        };
        if read.batches.is_empty() {
            // Caught up: wait for an append, or a tick (which notices
            // retention and deleted topics).
            tokio::select! {
                changed = log_end.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let mut records = Vec::new();
        for b in &read.batches {
            match batch::records(b) {
                Ok(rs) => records.extend(rs.into_iter().filter(|r| r.offset >= cursor)),
                Err(e) => {
                    tracing::warn!(topic, partition, error = %e, "MQTT feed: unreadable batch");
                    return;
                }
            }
        }
        let next = records.last().map_or(cursor, |r| r.offset + 1).max(
            read.batches
                .last()
                .and_then(|b| edgebus_proto::batch::BatchHeader::parse(b).ok())
                .map_or(cursor, |h| h.next_offset()),
        );
        cursor = next;
        let delivery = Delivery {
            topic: topic.clone(),
            partition,
            records,
            next,
        };
        if tx.send(delivery).await.is_err() {
            return;
        }
    }
}
