//! The Kafka listener: accepts TCP connections (TLS off loopback), reads
//! length-prefixed request frames under the door's limits, and writes the
//! answers in request order, as Kafka clients require.
//!
//! Requests on one connection run concurrently (a long-polling Fetch does
//! not hold up a Heartbeat behind it), except that Produce requests are
//! accepted one after another in the order they arrived, so an idempotent
//! producer's batches reach the partition engine in sequence order. Only
//! the wait for their acks overlaps.
//!
//! Limits: `kafka.max_connections` (closed at accept),
//! `kafka.max_frame_bytes` (closed), `kafka.max_inflight_per_connection`
//! (the next request is not read until an answer is written),
//! `kafka.request_read_timeout_ms` (a request or TLS handshake that stops
//! half way: closed) and `kafka.idle_timeout_ms`. Each refusal is logged
//! and counted in `edgebus_kafka_refusals_total{reason}`; other
//! connections are unaffected.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::api::{self, FrameError, Framed, Request};
use super::group::ClassicGroups;
use super::{KafkaConfig, KafkaRefusal, produce};
use crate::broker::Broker;

/// What every Kafka connection shares: the broker's parts, the door's
/// config, and the classic consumer groups.
pub struct Door {
    /// The broker.
    pub broker: Broker,
    /// The `[kafka]` config.
    pub config: KafkaConfig,
    /// Consumer groups of Kafka clients.
    pub groups: ClassicGroups,
}

/// An answer to come, in request order.
pub type Reply = Pin<Box<dyn Future<Output = Result<Option<Bytes>, FrameError>> + Send>>;

/// Why reading a request frame stopped the connection.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("no request for {0:?}")]
    Idle(Duration),
    #[error("request not finished within {0:?}")]
    Timeout(Duration),
    #[error("request frame of {len} bytes exceeds kafka.max_frame_bytes {max}")]
    TooLarge { len: i64, max: u32 },
    #[error("connection closed in the middle of a request frame")]
    Truncated,
    #[error(transparent)]
    Io(std::io::Error),
}

/// The TLS setup of a listener on `addr`: none on loopback (unless
/// `kafka.tls_on_loopback`), else the broker's server config without
/// QUIC's ALPN.
pub fn acceptor(
    addr: SocketAddr,
    config: &KafkaConfig,
    tls: &rustls::ServerConfig,
) -> Option<TlsAcceptor> {
    if addr.ip().is_loopback() && !config.tls_on_loopback {
        return None;
    }
    let mut config = tls.clone();
    config.alpn_protocols.clear();
    Some(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts connections until the task is aborted (aborting it also ends
/// the connections and the group timer it runs).
pub async fn run(listener: TcpListener, tls: Option<TlsAcceptor>, door: Arc<Door>) {
    let open = Arc::new(AtomicUsize::new(0));
    let mut connections = JoinSet::new();
    let timer = door.groups.clone().run_timer();
    tokio::pin!(timer);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next() => continue,
            () = &mut timer => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off, go on.
                tracing::warn!(error = %e, "kafka accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let metrics = &door.broker.metrics.kafka;
        let limit = door.config.max_connections;
        if open.load(Ordering::Acquire) >= limit {
            tracing::warn!(%peer, limit, "kafka connection refused: kafka.max_connections");
            metrics.refused(KafkaRefusal::MaxConnections);
            continue;
        }
        metrics.accepted.inc();
        open.fetch_add(1, Ordering::AcqRel);
        let (door, open, tls) = (door.clone(), open.clone(), tls.clone());
        connections.spawn(async move {
            let metrics = door.broker.metrics.kafka.open.clone();
            metrics.inc();
            connection(stream, peer, tls, door).await;
            metrics.dec();
            open.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    door: Arc<Door>,
) {
    let _ = stream.set_nodelay(true);
    let advertised = advertised(&door.config, &stream);
    match tls {
        None => serve(stream, peer, advertised, door).await,
        Some(acceptor) => {
            let limit = Duration::from_millis(door.config.request_read_timeout_ms);
            let metrics = &door.broker.metrics.kafka;
            match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => serve(stream, peer, advertised, door).await,
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "kafka TLS handshake failed");
                    metrics.refused(KafkaRefusal::Handshake);
                }
                Err(_) => {
                    tracing::warn!(%peer, "kafka TLS handshake not finished in time");
                    metrics.refused(KafkaRefusal::ReadTimeout);
                }
            }
        }
    }
}

/// The host and port clients are told to connect to.
fn advertised(config: &KafkaConfig, stream: &TcpStream) -> (String, i32) {
    if let Some((host, port)) = config
        .advertised
        .as_deref()
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(h, p)| Some((h.to_owned(), p.parse().ok()?)))
    {
        return (host, port);
    }
    match stream.local_addr() {
        Ok(addr) => (addr.ip().to_string(), i32::from(addr.port())),
        Err(_) => ("localhost".to_owned(), 9092),
    }
}

async fn serve<S>(stream: S, peer: SocketAddr, advertised: (String, i32), door: Arc<Door>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tracing::debug!(%peer, "kafka connection open");
    let (rd, wr) = tokio::io::split(stream);
    let inflight = door.config.max_inflight_per_connection.max(1);
    let (tx, rx) = mpsc::channel(inflight);
    // Both halves in this task, so ending it (shutdown) drops every answer
    // still to come, and with them the handler tasks (see `Handler`).
    tokio::join!(
        read_requests(rd, tx, inflight, peer, advertised, &door),
        write_replies(wr, rx, peer),
    );
    tracing::debug!(%peer, "kafka connection done");
}

/// A handler task that is aborted when its answer is no longer awaited
/// (the connection ended), so a held JoinGroup or Fetch does not outlive it.
struct Handler(tokio::task::JoinHandle<Result<Option<Bytes>, FrameError>>);

impl Future for Handler {
    type Output = Result<Option<Bytes>, FrameError>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|joined| joined.unwrap_or_else(|e| Err(FrameError::Handler(e.to_string()))))
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads requests until the client closes or a frame is refused, handing
/// their answers to come to the writer in order.
async fn read_requests<R: AsyncRead + Unpin>(
    mut rd: R,
    tx: mpsc::Sender<(Reply, OwnedSemaphorePermit)>,
    inflight: usize,
    peer: SocketAddr,
    advertised: (String, i32),
    door: &Arc<Door>,
) {
    let permits = Arc::new(Semaphore::new(inflight));
    let metrics = &door.broker.metrics.kafka;
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let frame = match read_frame(&mut rd, &door.config).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                match &e {
                    ReadError::Idle(_) | ReadError::Io(_) => {
                        tracing::debug!(%peer, error = %e, "kafka connection closed");
                    }
                    ReadError::Timeout(_) => {
                        tracing::warn!(%peer, error = %e, "kafka connection closed");
                        metrics.refused(KafkaRefusal::ReadTimeout);
                    }
                    ReadError::TooLarge { .. } => {
                        tracing::warn!(%peer, error = %e, "kafka connection closed");
                        metrics.refused(KafkaRefusal::MaxFrameBytes);
                    }
                    ReadError::Truncated => {
                        tracing::warn!(%peer, error = %e, "kafka connection closed");
                        metrics.refused(KafkaRefusal::Malformed);
                    }
                }
                break;
            }
        };
        let reply: Reply = match api::decode(frame, peer, advertised.clone()) {
            Err(e) => {
                tracing::warn!(%peer, error = %e, "kafka connection closed");
                metrics.refused(KafkaRefusal::Malformed);
                break;
            }
            Ok(Framed::Unsupported(answer)) => {
                tracing::info!(%peer, "kafka request of an unsupported API or version");
                metrics.refused(KafkaRefusal::Unsupported);
                Box::pin(std::future::ready(Ok(Some(answer))))
            }
            Ok(Framed::Request(framed)) => {
                let (call, request) = *framed;
                tracing::debug!(
                    %peer,
                    client = %call.client_id,
                    api = ?call.api,
                    version = call.version,
                    "kafka request"
                );
                dispatch(door, call, request).await
            }
        };
        if tx.send((reply, permit)).await.is_err() {
            break;
        }
    }
}

/// Starts serving one request: a Produce is accepted here, in order; any
/// other request runs in its own task.
async fn dispatch(door: &Arc<Door>, call: api::Call, request: Request) -> Reply {
    match request {
        Request::Produce(request) => produce::accept(door, &call, request).await,
        request => {
            let door = door.clone();
            Box::pin(Handler(tokio::spawn(async move {
                api::dispatch(&door, &call, request).await
            })))
        }
    }
}

/// Reads one frame: `None` on a clean close between frames.
async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    config: &KafkaConfig,
) -> Result<Option<Bytes>, ReadError> {
    let idle = Duration::from_millis(config.idle_timeout_ms);
    let mut len = [0u8; 4];
    match tokio::time::timeout(idle, rd.read(&mut len[..1])).await {
        Err(_) => return Err(ReadError::Idle(idle)),
        Ok(Err(e)) => return Err(ReadError::Io(e)),
        Ok(Ok(0)) => return Ok(None),
        Ok(Ok(_)) => {}
    }
    let limit = Duration::from_millis(config.request_read_timeout_ms);
    let rest = async {
        rd.read_exact(&mut len[1..]).await?;
        let declared = i32::from_be_bytes(len);
        if declared < 0 || declared as u32 > config.max_frame_bytes {
            return Err(ReadError::TooLarge {
                len: declared.into(),
                max: config.max_frame_bytes,
            });
        }
        // Grown as bytes arrive, so a client that only announces a large
        // frame does not make the broker hold that much memory for it.
        let declared = declared as usize;
        let mut body = Vec::with_capacity(declared.min(64 << 10));
        (&mut *rd)
            .take(declared as u64)
            .read_to_end(&mut body)
            .await?;
        if body.len() < declared {
            return Err(ReadError::Truncated);
        }
        Ok(Bytes::from(body))
    };
    match tokio::time::timeout(limit, rest).await {
        Err(_) => Err(ReadError::Timeout(limit)),
        Ok(read) => read.map(Some),
    }
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ReadError::Truncated
        } else {
            ReadError::Io(e)
        }
    }
}

/// Writes answers in request order; a failed one closes the connection.
async fn write_replies<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<(Reply, OwnedSemaphorePermit)>,
    peer: SocketAddr,
) {
    while let Some((reply, permit)) = rx.recv().await {
        let answer = match reply.await {
            Ok(Some(answer)) => answer,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(%peer, error = %e, "kafka connection closed");
                break;
            }
        };
        if wr.write_all(&answer).await.is_err() || wr.flush().await.is_err() {
            break;
        }
        drop(permit);
    }
    let _ = wr.shutdown().await;
}
