//! The connection to a broker, and admin requests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use edgebus_proto::batch::{self, StoredRecord};
use edgebus_proto::frame::{PartitionInfo, Position, Request, Response, TopicSpec};
use edgebus_proto::limits::DEFAULT_MAX_FRAME_BYTES;
use quinn::crypto::rustls::QuicClientConfig;
use tokio::sync::Mutex;

use crate::error::ClientError;
use crate::tls::{self, Identity};
use crate::wire;

/// How to reach and authenticate a broker.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Broker address.
    pub broker: SocketAddr,
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
    /// A config for `broker` trusting the CA in `ca`, with the server name
    /// `localhost` (what a broker's self-made certificate carries).
    pub fn new(broker: SocketAddr, ca: impl Into<PathBuf>) -> Self {
        ClientConfig {
            broker,
            server_name: "localhost".into(),
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
/// which is re-established transparently after it drops.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    endpoint: quinn::Endpoint,
    quic: quinn::ClientConfig,
    conn: Mutex<Option<quinn::Connection>>,
    correlation: AtomicU32,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("broker", &self.inner.config.broker)
            .finish()
    }
}

impl Client {
    /// Connects to the broker and verifies its certificate.
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
        let bind: SocketAddr = if config.broker.is_ipv6() {
            "[::]:0".parse().expect("literal address")
        } else {
            "0.0.0.0:0".parse().expect("literal address")
        };
        let endpoint = quinn::Endpoint::client(bind).map_err(|e| ClientError::Connection {
            addr: config.broker.to_string(),
            detail: format!("binding UDP socket: {e}"),
        })?;
        let client = Client {
            inner: Arc::new(Inner {
                config,
                endpoint,
                quic,
                conn: Mutex::new(None),
                correlation: AtomicU32::new(1),
            }),
        };
        client.connection().await?;
        Ok(client)
    }

    /// The broker this client talks to.
    pub fn broker(&self) -> SocketAddr {
        self.inner.config.broker
    }

    /// The largest frame this client accepts.
    pub fn max_frame_bytes(&self) -> u32 {
        self.inner.config.max_frame_bytes
    }

    pub(crate) fn next_correlation_id(&self) -> u32 {
        self.inner.correlation.fetch_add(1, Ordering::Relaxed)
    }

    /// The live connection, reconnecting if the last one was lost.
    pub(crate) async fn connection(&self) -> Result<quinn::Connection, ClientError> {
        let mut slot = self.inner.conn.lock().await;
        if let Some(conn) = slot.as_ref()
            && conn.close_reason().is_none()
        {
            return Ok(conn.clone());
        }
        let cfg = &self.inner.config;
        let err = |detail: String| ClientError::Connection {
            addr: cfg.broker.to_string(),
            detail,
        };
        let connecting = self
            .inner
            .endpoint
            .connect_with(self.inner.quic.clone(), cfg.broker, &cfg.server_name)
            .map_err(|e| err(e.to_string()))?;
        let conn = tokio::time::timeout(cfg.connect_timeout, connecting)
            .await
            .map_err(|_| err("connect timed out".into()))?
            .map_err(|e| err(e.to_string()))?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Opens a new bidirectional stream on the live connection.
    pub(crate) async fn open_stream(
        &self,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), ClientError> {
        let conn = self.connection().await?;
        conn.open_bi().await.map_err(|e| ClientError::Connection {
            addr: self.inner.config.broker.to_string(),
            detail: e.to_string(),
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
        let body = wire::read_frame(&mut recv, self.inner.config.max_frame_bytes)
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

pub(crate) fn unexpected(response: &Response) -> ClientError {
    ClientError::Protocol(format!("unexpected response {response:?}"))
}
