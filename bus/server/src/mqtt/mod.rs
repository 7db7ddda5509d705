//! The MQTT front door: devices publish into mapped edgebus topics and
//! subscribe to them, over MQTT 3.1.1 and 5.0 on TCP.
//!
//! ```text
//!  device ──TCP──▶ door (accept, max_clients) ──▶ connection (session state machine)
//!                                                  │ PUBLISH → gather (per partition) → cmd::produce (ingest chains, writer)
//!                                                  │ SUBSCRIBE → feeds: one per partition, reader + notifier
//!                                                  └ session state → metadata store (redb)
//! ```
//!
//! - [`packet`]: MQTT packets of either version through rumqttc's codecs.
//! - [`config`]: `[mqtt]`: listener, mappings, accounts, limits.
//! - [`session`]: what a persistent session stores; topic mapping.
//! - `connection`: one client connection, from CONNECT to its end.
//! - `gather`: one task per partition published to, which appends the
//!   publishes of every connection that arrive together as one batch.
//!
//! A publish goes through the same produce path as a QUIC `Produce`
//! ([`crate::cmd::produce`]), so ingest plugins run on it and its record
//! is like any other: the MQTT topic is its key and its `mqtt-topic`
//! header, the payload its value, MQTT 5 user properties further headers.

pub mod config;
mod connection;
mod gather;
pub mod packet;
pub mod session;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use crate::broker::Broker;
use config::MqttConfig;
use session::Sessions;

/// Header that carries a record's MQTT topic.
pub const TOPIC_HEADER: &str = "mqtt-topic";

/// A limit or rule an MQTT connection or packet was refused by, as counted
/// in `edgebus_refusals_total{limit=…}`.
#[derive(Debug, Clone, Copy)]
pub enum MqttRefusal {
    /// A publish to a topic no mapping covers.
    UnmappedTopic,
    /// `mqtt.max_clients`.
    MaxClients,
    /// `mqtt.max_packet_bytes`.
    MaxPacketBytes,
    /// `mqtt.max_inflight_per_client`.
    MaxInflight,
    /// `mqtt.max_subscriptions_per_client`.
    MaxSubscriptions,
    /// A malformed packet.
    Malformed,
    /// No CONNECT within `mqtt.connect_timeout_ms`.
    ConnectTimeout,
    /// A bad login or an anonymous client where that is not allowed.
    NotAuthorized,
}

impl MqttRefusal {
    fn label(self) -> &'static str {
        match self {
            MqttRefusal::UnmappedTopic => "mqtt_unmapped_topic",
            MqttRefusal::MaxClients => "mqtt_max_clients",
            MqttRefusal::MaxPacketBytes => "mqtt_max_packet_bytes",
            MqttRefusal::MaxInflight => "mqtt_max_inflight_per_client",
            MqttRefusal::MaxSubscriptions => "mqtt_max_subscriptions_per_client",
            MqttRefusal::Malformed => "mqtt_malformed_packet",
            MqttRefusal::ConnectTimeout => "mqtt_connect_timeout",
            MqttRefusal::NotAuthorized => "mqtt_not_authorized",
        }
    }
}

/// Why the door could not open.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DoorError {
    /// The listener could not bind.
    #[error("MQTT listener on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A mapping or account in the config is unusable.
    #[error("mqtt config: {0}")]
    Config(String),
    /// Stored sessions could not be loaded.
    #[error(transparent)]
    Sessions(#[from] session::SessionError),
}

/// The live connection of a client id, so a new one can take over.
struct Live {
    connection: u64,
    kick: Option<oneshot::Sender<()>>,
    /// Held by the live connection until its session is saved.
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// Everything connections share.
pub(crate) struct Door {
    broker: Broker,
    config: MqttConfig,
    sessions: Sessions,
    clients: AtomicUsize,
    next_connection: AtomicU64,
    live: Mutex<HashMap<String, Live>>,
    /// The gather task of each partition published to.
    gathers: Mutex<HashMap<(String, u32), tokio::sync::mpsc::Sender<gather::Part>>>,
}

impl Door {
    fn refused(&self, why: MqttRefusal) {
        self.broker
            .metrics
            .connections
            .refusals
            .get_or_create(&vec![("limit", why.label().to_owned())])
            .inc();
    }
}

/// The bound MQTT listeners, ready to [`serve`].
pub struct Listener {
    plain: Option<TcpListener>,
    tls: Option<(TcpListener, TlsAcceptor)>,
    door: Arc<Door>,
    /// The bound address of the plain listener.
    pub addr: Option<SocketAddr>,
    /// The bound address of the TLS listener.
    pub tls_addr: Option<SocketAddr>,
}

/// Checks the config, loads stored sessions and binds the listeners that
/// `config` turns on: `listen` in plain TCP, `tls_listen` with `tls`.
pub async fn bind(
    config: MqttConfig,
    tls: rustls::ServerConfig,
    broker: Broker,
) -> Result<Listener, DoorError> {
    for m in &config.map {
        m.check().map_err(|e| DoorError::Config(e.to_string()))?;
        if broker.topics.spec(&m.topic).is_err() {
            tracing::warn!(filter = %m.filter, topic = %m.topic,
                "MQTT mapping names a topic that does not exist yet: publishes to it are refused until it is created");
        }
    }
    for u in &config.users {
        u.check().map_err(|e| DoorError::Config(e.to_string()))?;
    }
    let store = broker.store.clone();
    let sessions = tokio::task::spawn_blocking(move || Sessions::load(store))
        .await
        .map_err(|e| DoorError::Config(e.to_string()))??;
    let plain = match config.listen {
        Some(addr) => Some(tcp(addr).await?),
        None => None,
    };
    let tls = match config.tls_listen {
        Some(addr) => {
            let mut tls = tls;
            // MQTT clients offer no ALPN (or "mqtt"): accept them all.
            tls.alpn_protocols.clear();
            Some((tcp(addr).await?, TlsAcceptor::from(Arc::new(tls))))
        }
        None => None,
    };
    let bound = |l: &TcpListener| l.local_addr().ok();
    Ok(Listener {
        addr: plain.as_ref().and_then(bound),
        tls_addr: tls.as_ref().and_then(|(l, _)| bound(l)),
        plain,
        tls,
        door: Arc::new(Door {
            broker,
            config,
            sessions,
            clients: AtomicUsize::new(0),
            next_connection: AtomicU64::new(1),
            live: Mutex::new(HashMap::new()),
            gathers: Mutex::new(HashMap::new()),
        }),
    })
}

async fn tcp(addr: SocketAddr) -> Result<TcpListener, DoorError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DoorError::Listen { addr, source })
}

/// Accepts one connection from `listener`, or never when it is off.
async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Accepts MQTT connections until `shutdown` resolves.
pub async fn serve(listener: Listener, shutdown: impl Future<Output = ()>) {
    let Listener {
        plain, tls, door, ..
    } = listener;
    tokio::pin!(shutdown);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    loop {
        let (accepted, secure) = tokio::select! {
            a = accept(plain.as_ref()) => (a, false),
            a = accept(tls.as_ref().map(|(l, _)| l)) => (a, true),
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off, go on.
                tracing::warn!(error = %e, "MQTT accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let door = door.clone();
        let stop = stop_rx.clone();
        let acceptor = secure
            .then(|| tls.as_ref().map(|(_, a)| a.clone()))
            .flatten();
        tokio::spawn(async move {
            let id = door.next_connection.fetch_add(1, Ordering::Relaxed);
            let Some(acceptor) = acceptor else {
                let (rd, wr) = tokio::io::split(stream);
                let io = connection::Io::new(rd, wr, None);
                return connection::run(door, id, io, peer, stop).await;
            };
            let timeout = Duration::from_millis(door.config.connect_timeout_ms);
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let identity = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .and_then(|cert| common_name(cert));
                    let (rd, wr) = tokio::io::split(stream);
                    let io = connection::Io::new(rd, wr, identity);
                    connection::run(door, id, io, peer, stop).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "MQTT TLS handshake failed"),
                Err(_) => door.refused(MqttRefusal::ConnectTimeout),
            }
        });
    }
    let _ = stop_tx.send(true);
    // Give connections a moment to save their sessions.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while door.clients.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The subject common name of a (verified) client certificate.
fn common_name(cert: &rustls::pki_types::CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

impl Door {
    /// The queue of the gather task of `partition` of `topic`, started on
    /// first use (and again should it have ended).
    fn gather(&self, topic: &str, partition: u32) -> tokio::sync::mpsc::Sender<gather::Part> {
        let mut gathers = self.gathers.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (topic.to_owned(), partition);
        match gathers.get(&key) {
            Some(tx) if !tx.is_closed() => tx.clone(),
            _ => {
                let tx = gather::spawn(self.broker.clone(), topic.to_owned(), partition);
                gathers.insert(key, tx.clone());
                tx
            }
        }
    }

    /// Registers `connection` as the live one of `client_id`, kicking any
    /// other, and waits until that one has saved its session.
    async fn take_over(
        &self,
        client_id: &str,
        connection: u64,
    ) -> (oneshot::Receiver<()>, tokio::sync::OwnedMutexGuard<()>) {
        let (kick, kicked) = oneshot::channel();
        let turn = {
            let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
            let turn = match live.get_mut(client_id) {
                Some(old) => {
                    if let Some(k) = old.kick.take() {
                        let _ = k.send(());
                    }
                    old.turn.clone()
                }
                None => Arc::new(tokio::sync::Mutex::new(())),
            };
            live.insert(
                client_id.to_owned(),
                Live {
                    connection,
                    kick: Some(kick),
                    turn: turn.clone(),
                },
            );
            turn
        };
        (kicked, turn.lock_owned().await)
    }

    /// Forgets `connection` as the live one of `client_id` (unless another
    /// took over since).
    fn leave(&self, client_id: &str, connection: u64) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if live
            .get(client_id)
            .is_some_and(|l| l.connection == connection)
        {
            live.remove(client_id);
        }
    }
}
