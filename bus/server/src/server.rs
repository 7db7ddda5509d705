//! The QUIC shell: accept connections, read frames, answer in order.
//!
//! Every bidirectional stream carries requests and their responses in
//! order, so a producer can pipeline batches on one stream and read ordered
//! acks. A `Subscribe` hands its stream to [`crate::feed`] until the client
//! closes it.
//!
//! Limits applied here: connections (`max_connections`, refused at the
//! handshake), streams per connection (QUIC flow control), frame size
//! (`max_frame_bytes`, answered with `FrameTooLarge`), and outstanding
//! requests per connection (`max_inflight_per_connection`, answered with
//! `TooManyInFlight`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use edgebus_proto::ErrorCode;
use edgebus_proto::frame::{Acks, FrameError, FrameHeader, Request, Response};
use quinn::crypto::rustls::QuicServerConfig;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::broker::Broker;
use crate::cmd::{self, produce};
use crate::config::Limits;
use crate::error::{self, Coded};
use crate::feed::Subscribe;
use crate::metrics::Refusal;
use crate::wire::{self, WireError};

/// QUIC application error codes used when closing connections and streams.
pub mod close_code {
    /// Normal shutdown.
    pub const SHUTDOWN: u32 = 0;
    /// The stream sent a frame over `max_frame_bytes`.
    pub const FRAME_TOO_LARGE: u32 = 2;
}

/// Why a stream answered a frame before any handler saw it.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    /// The frame is over `max_frame_bytes`.
    #[error("frame of {len} bytes exceeds max_frame_bytes {max}")]
    FrameTooLarge { len: u32, max: u32 },
    /// The frame is not a request.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The connection has too many requests outstanding.
    #[error("more than max_inflight_per_connection ({0}) requests outstanding")]
    TooManyInFlight(usize),
}

impl Coded for StreamError {
    fn code(&self) -> ErrorCode {
        match self {
            StreamError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            StreamError::Frame(e) => e.code(),
            StreamError::TooManyInFlight(_) => ErrorCode::TooManyInFlight,
        }
    }
}

/// Builds the quinn server config from TLS and limits.
pub fn quic_config(
    tls: rustls::ServerConfig,
    limits: &Limits,
) -> Result<quinn::ServerConfig, String> {
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(limits.max_streams_per_connection.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window((8u32 << 20).into())
        .receive_window((32u32 << 20).into())
        .send_window(32 << 20)
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_millis(limits.idle_timeout_ms.into()))
                .map_err(|e| e.to_string())?,
        ));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Accepts connections until `shutdown` resolves, then closes the endpoint
/// and waits for connections to drain.
pub async fn run(endpoint: quinn::Endpoint, broker: Broker, shutdown: impl Future<Output = ()>) {
    let connections = Arc::new(AtomicUsize::new(0));
    let metrics = broker.metrics.clone();
    tokio::pin!(shutdown);
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            () = &mut shutdown => break,
        };
        let Some(incoming) = incoming else { break };
        let limit = broker.limits.max_connections;
        if connections.load(Ordering::Acquire) >= limit {
            tracing::warn!(remote = %incoming.remote_address(), limit, "connection refused: max_connections");
            incoming.refuse();
            metrics.connections.refused(Refusal::MaxConnections);
            continue;
        }
        connections.fetch_add(1, Ordering::AcqRel);
        let (broker, connections) = (broker.clone(), connections.clone());
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) if is_peer(&conn) => match broker.cluster.clone() {
                    Some(cluster) => cluster.serve_peer(conn).await,
                    // rustls offers the peer ALPN only on a cluster node.
                    None => conn.close(1u32.into(), b"not a cluster node"),
                },
                Ok(conn) => {
                    let counted = broker.metrics.clone();
                    counted.connections.accepted.inc();
                    counted.connections.open.inc();
                    serve_connection(conn, broker).await;
                    counted.connections.open.dec();
                }
                Err(e) => tracing::info!(%remote, error = %e, "handshake failed"),
            }
            connections.fetch_sub(1, Ordering::AcqRel);
        });
    }
    metrics.set_listening(false);
    endpoint.close(close_code::SHUTDOWN.into(), b"shutting down");
    endpoint.wait_idle().await;
}

/// Whether the connection negotiated the peer protocol's ALPN.
fn is_peer(conn: &quinn::Connection) -> bool {
    conn.handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol)
        .is_some_and(|alpn| alpn == crate::cluster::peer::PEER_ALPN)
}

async fn serve_connection(conn: quinn::Connection, broker: Broker) {
    let remote = conn.remote_address();
    tracing::debug!(%remote, "connection open");
    let in_flight = Arc::new(Semaphore::new(broker.limits.max_inflight_per_connection));
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let (broker, in_flight) = (broker.clone(), in_flight.clone());
                tokio::spawn(serve_stream(broker, in_flight, send, recv));
            }
            Err(e) => {
                tracing::debug!(%remote, reason = %e, "connection closed");
                return;
            }
        }
    }
}

type PendingReply = Pin<Box<dyn Future<Output = Option<Response>> + Send>>;

/// What the reading half hands the writing half, in request order.
enum Outgoing {
    Reply {
        correlation_id: u32,
        reply: PendingReply,
        permit: Option<OwnedSemaphorePermit>,
    },
    Subscribe {
        correlation_id: u32,
        subscribe: Subscribe,
        recv: quinn::RecvStream,
    },
}

async fn serve_stream(
    broker: Broker,
    in_flight: Arc<Semaphore>,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let (tx, rx) = mpsc::channel(broker.limits.max_inflight_per_connection.max(1));
    let responder = tokio::spawn(respond(broker.clone(), send, rx));
    let max_frame = broker.limits.max_frame_bytes;
    loop {
        let body = match wire::read_frame(&mut recv, max_frame).await {
            Ok(Some(body)) => body,
            Ok(None) => break,
            Err(WireError::TooLarge(e)) => {
                // The rest of the stream cannot be framed any more: answer,
                // then stop reading it. The connection lives on.
                let error = StreamError::FrameTooLarge {
                    len: e.len,
                    max: e.max,
                };
                broker.metrics.connections.refused(Refusal::MaxFrameBytes);
                let _ = tx.send(refused(0, &error)).await;
                let _ = recv.stop(close_code::FRAME_TOO_LARGE.into());
                break;
            }
            Err(e) => {
                tracing::debug!(error = %e, "stream read failed");
                break;
            }
        };
        let correlation_id = FrameHeader::parse(&body).map_or(0, |h| h.correlation_id);
        let request = match Request::decode(body) {
            Ok((_, request)) => request,
            Err(e) => {
                if tx
                    .send(refused(correlation_id, &StreamError::from(e)))
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
        };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            let error = StreamError::TooManyInFlight(broker.limits.max_inflight_per_connection);
            broker.metrics.connections.refused(Refusal::MaxInflight);
            if tx.send(refused(correlation_id, &error)).await.is_err() {
                break;
            }
            continue;
        };
        let reply: PendingReply = match request {
            Request::Subscribe {
                topic,
                partition,
                from,
                max_bytes,
                chain,
                on_failure,
                state,
            } => {
                drop(permit);
                let subscribe = Subscribe {
                    topic,
                    partition,
                    from,
                    max_bytes,
                    chain,
                    on_failure,
                    state,
                };
                let _ = tx
                    .send(Outgoing::Subscribe {
                        correlation_id,
                        subscribe,
                        recv,
                    })
                    .await;
                break;
            }
            Request::Produce {
                topic,
                partition,
                acks,
                batch,
            } => {
                let p = produce::Produce {
                    topic,
                    partition,
                    acks,
                    batch,
                };
                let b = &broker;
                let accepted =
                    produce::produce(&b.topics, &b.attachments, &b.writer, &b.dead_letters, p)
                        .await;
                match accepted {
                    // A topic the control log has created but this node
                    // has not yet: as Kafka's LEADER_NOT_AVAILABLE, the
                    // producer looks up the leader again and retries.
                    Err(produce::ProduceError::UnknownTopic(unknown))
                        if b.cluster.as_ref().is_some_and(|c| c.has_topic(&unknown.0)) =>
                    {
                        Box::pin(std::future::ready(Some(Response::error(
                            ErrorCode::NotLeader,
                            format!("topic {:?} is not created on this node yet", unknown.0),
                        ))))
                    }
                    Err(e) => Box::pin(std::future::ready(Some(error::response(&e)))),
                    Ok(pending) => Box::pin(async move {
                        let response = cmd::respond(produce::acknowledged(pending).await);
                        (acks != Acks::None).then_some(response)
                    }),
                }
            }
            other => {
                let broker = broker.clone();
                Box::pin(async move { Some(cmd::dispatch(&broker, other).await) })
            }
        };
        let outgoing = Outgoing::Reply {
            correlation_id,
            reply,
            permit: Some(permit),
        };
        if tx.send(outgoing).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = responder.await;
}

/// An error answer that needs no handler.
fn refused(correlation_id: u32, error: &StreamError) -> Outgoing {
    Outgoing::Reply {
        correlation_id,
        reply: Box::pin(std::future::ready(Some(error::response(error)))),
        permit: None,
    }
}

/// Writes replies in request order, then finishes the stream.
async fn respond(broker: Broker, mut send: quinn::SendStream, mut rx: mpsc::Receiver<Outgoing>) {
    let mut buf = BytesMut::new();
    while let Some(outgoing) = rx.recv().await {
        match outgoing {
            Outgoing::Reply {
                correlation_id,
                reply,
                permit,
            } => {
                let response = reply.await;
                drop(permit);
                let Some(response) = response else { continue };
                if wire::write_response(&mut send, correlation_id, &response, &mut buf)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Outgoing::Subscribe {
                correlation_id,
                subscribe,
                recv,
            } => {
                broker
                    .subscriptions
                    .serve(&mut send, recv, correlation_id, subscribe, buf)
                    .await;
                return;
            }
        }
    }
    let _ = send.finish();
}
