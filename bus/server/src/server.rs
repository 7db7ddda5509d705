//! The QUIC shell: accept connections, read frames, answer in order.
//!
//! Every bidirectional stream carries requests and their responses in
//! order, so a producer can pipeline batches on one stream and read ordered
//! acks. A `Subscribe` turns its stream into a push feed until the client
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

use bytes::Bytes;
use bytes::BytesMut;
use edgebus_client::wire::{self, WireError};
use edgebus_proto::ErrorCode;
use edgebus_proto::batch::{BatchBuilder, ProducerStamp, StoredRecord};
use edgebus_proto::frame::{FailurePolicy, FrameHeader, PluginRef, Position, Request, Response};
use edgebus_wasm::PluginRecord;
use quinn::crypto::rustls::QuicServerConfig;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::broker::{Broker, Failure};
use crate::config::Limits;
use crate::plugins::{Halt, LiveChain, dead_letter, from_plugin, to_plugin};

/// QUIC application error codes used when closing connections and streams.
pub mod close_code {
    /// Normal shutdown.
    pub const SHUTDOWN: u32 = 0;
    /// The stream sent a frame over `max_frame_bytes`.
    pub const FRAME_TOO_LARGE: u32 = 2;
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
    tokio::pin!(shutdown);
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            () = &mut shutdown => break,
        };
        let Some(incoming) = incoming else { break };
        let limit = broker.limits().max_connections;
        if connections.load(Ordering::Acquire) >= limit {
            tracing::warn!(remote = %incoming.remote_address(), limit, "connection refused: max_connections");
            incoming.refuse();
            continue;
        }
        connections.fetch_add(1, Ordering::AcqRel);
        let (broker, connections) = (broker.clone(), connections.clone());
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => serve_connection(conn, broker).await,
                Err(e) => tracing::info!(%remote, error = %e, "handshake failed"),
            }
            connections.fetch_sub(1, Ordering::AcqRel);
        });
    }
    endpoint.close(close_code::SHUTDOWN.into(), b"shutting down");
    endpoint.wait_idle().await;
}

async fn serve_connection(conn: quinn::Connection, broker: Broker) {
    let remote = conn.remote_address();
    tracing::debug!(%remote, "connection open");
    let in_flight = Arc::new(Semaphore::new(broker.limits().max_inflight_per_connection));
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
        topic: String,
        partition: u32,
        from: Position,
        max_bytes: u32,
        chain: Vec<PluginRef>,
        on_failure: FailurePolicy,
        recv: quinn::RecvStream,
    },
}

async fn serve_stream(
    broker: Broker,
    in_flight: Arc<Semaphore>,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let (tx, rx) = mpsc::channel(broker.limits().max_inflight_per_connection.max(1));
    let responder = tokio::spawn(respond(broker.clone(), send, rx));
    let max_frame = broker.limits().max_frame_bytes;
    loop {
        let body = match wire::read_frame(&mut recv, max_frame).await {
            Ok(Some(body)) => body,
            Ok(None) => break,
            Err(WireError::FrameTooLarge { len, max }) => {
                // The rest of the stream cannot be framed any more: answer,
                // then stop reading it. The connection lives on.
                let error = Response::error(
                    ErrorCode::FrameTooLarge,
                    format!("frame of {len} bytes exceeds max_frame_bytes {max}"),
                );
                let _ = tx.send(ready(0, error, None)).await;
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
                let error = Response::error(e.code(), e.to_string());
                if tx.send(ready(correlation_id, error, None)).await.is_err() {
                    break;
                }
                continue;
            }
        };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            let error = Response::error(
                ErrorCode::TooManyInFlight,
                format!(
                    "more than max_inflight_per_connection ({}) requests outstanding",
                    broker.limits().max_inflight_per_connection
                ),
            );
            if tx.send(ready(correlation_id, error, None)).await.is_err() {
                break;
            }
            continue;
        };
        let outgoing = match request {
            Request::Subscribe {
                topic,
                partition,
                from,
                max_bytes,
                chain,
                on_failure,
            } => {
                drop(permit);
                let _ = tx
                    .send(Outgoing::Subscribe {
                        correlation_id,
                        topic,
                        partition,
                        from,
                        max_bytes,
                        chain,
                        on_failure,
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
                let reply: PendingReply = match broker.produce(topic, partition, acks, batch).await
                {
                    Err(error) => Box::pin(std::future::ready(Some(error))),
                    Ok(rx) => Box::pin(async move {
                        let response = match rx.await {
                            Ok(Ok(outcome)) => Response::Produced {
                                base_offset: outcome.base_offset(),
                                duplicate: matches!(
                                    outcome,
                                    edgebus_core::partition::AppendOutcome::Duplicate { .. }
                                ),
                            },
                            Ok(Err(e)) => Failure::from(e).0,
                            Err(_) => Response::error(ErrorCode::ShuttingDown, "writer stopped"),
                        };
                        if acks == edgebus_proto::frame::Acks::None {
                            None
                        } else {
                            Some(response)
                        }
                    }),
                };
                Outgoing::Reply {
                    correlation_id,
                    reply,
                    permit: Some(permit),
                }
            }
            other => {
                let broker = broker.clone();
                Outgoing::Reply {
                    correlation_id,
                    reply: Box::pin(async move { Some(broker.handle(other).await) }),
                    permit: Some(permit),
                }
            }
        };
        if tx.send(outgoing).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = responder.await;
}

fn ready(
    correlation_id: u32,
    response: Response,
    permit: Option<OwnedSemaphorePermit>,
) -> Outgoing {
    Outgoing::Reply {
        correlation_id,
        reply: Box::pin(std::future::ready(Some(response))),
        permit,
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
                if send_response(&mut send, correlation_id, response, &mut buf)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Outgoing::Subscribe {
                correlation_id,
                topic,
                partition,
                from,
                max_bytes,
                chain,
                on_failure,
                recv,
            } => {
                let mut feed = Feed {
                    send: &mut send,
                    correlation_id,
                    topic: &topic,
                    partition,
                    buf,
                };
                let chain = if chain.is_empty() {
                    None
                } else {
                    match ReadChain::build(&broker, chain, on_failure).await {
                        Ok(c) => Some(c),
                        Err(error) => return feed.fail(error).await,
                    }
                };
                push(&broker, &mut feed, recv, from, max_bytes, chain).await;
                return;
            }
        }
    }
    let _ = send.finish();
}

/// A subscription's stream and where it reads.
struct Feed<'a> {
    send: &'a mut quinn::SendStream,
    correlation_id: u32,
    topic: &'a str,
    partition: u32,
    buf: BytesMut,
}

impl Feed<'_> {
    async fn fail(&mut self, error: Response) {
        let _ = send_response(self.send, self.correlation_id, error, &mut self.buf).await;
        let _ = self.send.finish();
    }
}

/// Pushes batches down the feed as the partition grows, until the client
/// goes. With a plugin chain, only its results are sent, each with the
/// offset of the source record it came from.
async fn push(
    broker: &Broker,
    feed: &mut Feed<'_>,
    mut recv: quinn::RecvStream,
    from: Position,
    max_bytes: u32,
    mut chain: Option<ReadChain>,
) {
    let (topic, partition) = (feed.topic, feed.partition);
    let mut cursor = match broker.resolve(topic, partition, from).await {
        Ok(offset) => offset,
        Err(error) => return feed.fail(error).await,
    };
    let mut log_end = broker.notifier().watch(topic, partition);
    let mut idle_sent = false;
    let mut scratch = [0u8; 64];
    loop {
        let mut read = match broker.read_at(topic, partition, cursor, max_bytes).await {
            Ok(read) => read,
            Err(error) => return feed.fail(error).await,
        };
        let start = cursor;
        if let Some(last) = read.batches.last() {
            let next = edgebus_proto::batch::BatchHeader::parse(last)
                .map(|h| h.next_offset())
                .unwrap_or(cursor);
            cursor = next.max(cursor);
            idle_sent = false;
        } else if idle_sent {
            // Caught up: wait for an append, the client leaving, or a tick
            // (which notices retention and deleted topics).
            tokio::select! {
                changed = log_end.changed() => if changed.is_err() { return },
                r = recv.read(&mut scratch) => if !matches!(r, Ok(Some(_))) { return },
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        } else {
            // One empty frame tells the client where the log ends.
            idle_sent = true;
        }
        if let Some(c) = chain.as_mut()
            && !read.batches.is_empty()
        {
            match c
                .run(broker, (topic, partition), start, &read.batches, &mut recv)
                .await
            {
                Ok(batches) => read.batches = batches,
                Err(error) => return feed.fail(error).await,
            }
        }
        if send_fetched(feed, read, cursor).await.is_err() {
            return;
        }
    }
}

/// A subscription's read-path plugin chain.
struct ReadChain {
    refs: Vec<PluginRef>,
    policy: FailurePolicy,
    live: Option<LiveChain>,
    halt: Halt,
}

impl ReadChain {
    /// Builds the chain (checking every plugin initialises).
    async fn build(
        broker: &Broker,
        refs: Vec<PluginRef>,
        policy: FailurePolicy,
    ) -> Result<ReadChain, Response> {
        let live = build_live(broker, &refs).await?;
        Ok(ReadChain {
            refs,
            policy,
            live: Some(live),
            halt: Halt::default(),
        })
    }

    /// Runs the chain on stored batches and returns the batches to send.
    /// Under `halt`, a failure pauses with backoff and retries the same
    /// records on a rebuilt chain.
    async fn run(
        &mut self,
        broker: &Broker,
        (topic, partition): (&str, u32),
        from: u64,
        stored: &[Bytes],
        recv: &mut quinn::RecvStream,
    ) -> Result<Vec<Bytes>, Response> {
        let mut inputs = Vec::new();
        for b in stored {
            let records = edgebus_proto::batch::records(b)
                .map_err(|e| Response::error(ErrorCode::CorruptBatch, e.to_string()))?;
            inputs.extend(records.into_iter().filter(|r| r.offset >= from));
        }
        let counters = broker.plugins().read_counters(topic);
        loop {
            let mut live = match self.live.take() {
                Some(live) => live,
                None => build_live(broker, &self.refs).await?,
            };
            let plugins = broker.plugins().clone();
            let refs = self.refs.clone();
            let batch: Vec<PluginRecord> = inputs
                .iter()
                .map(|r| {
                    let mut p = to_plugin(r, true);
                    p.partition = Some(partition);
                    p
                })
                .collect();
            let (live, out) = tokio::task::spawn_blocking(move || {
                let out = plugins
                    .refresh(&mut live, &refs)
                    .map(|()| live.chain_mut().process(batch));
                (live, out)
            })
            .await
            .map_err(|e| Response::error(ErrorCode::PluginInvalid, e.to_string()))?;
            let out = out?;
            if let Some((plugin, message)) = &out.rejected {
                return Err(Response::error(
                    ErrorCode::PluginRejected,
                    format!("plugin {plugin:?} rejected the batch: {message}"),
                ));
            }
            if !out.failed.is_empty() && self.policy == FailurePolicy::Halt {
                let pause = self.halt.trip(std::time::Instant::now());
                counters.record(inputs.len(), &out, 0);
                tracing::warn!(%topic, partition, ?pause, "read-path chain halted");
                // Pause, but stop at once if the subscriber goes away.
                let mut probe = [0u8; 1];
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    r = recv.read(&mut probe) => if !matches!(r, Ok(Some(_))) {
                        return Err(Response::error(ErrorCode::ShuttingDown, "subscriber left"));
                    },
                }
                continue;
            }
            self.halt.clear();
            self.live = Some(live);
            let mut dead = 0;
            if self.policy == FailurePolicy::DeadLetter && !out.failed.is_empty() {
                let letters: Vec<_> = out
                    .failed
                    .iter()
                    .map(|(i, plugin, error)| {
                        let version = broker
                            .plugins()
                            .load(plugin)
                            .map_or(0, |(info, _)| info.version);
                        let input = &inputs[*i];
                        let at = Some((partition, input.offset));
                        dead_letter(input, topic, at, plugin, version, error)
                    })
                    .collect();
                dead = letters.len();
                broker.append_dead_letters(topic, &letters, true).await?;
            }
            counters.record(inputs.len(), &out, dead);
            return Ok(offset_batches(&inputs, out.outputs));
        }
    }
}

/// Builds a chain with in-memory state on the blocking pool.
async fn build_live(broker: &Broker, refs: &[PluginRef]) -> Result<LiveChain, Response> {
    let (plugins, refs) = (broker.plugins().clone(), refs.to_vec());
    tokio::task::spawn_blocking(move || {
        plugins.build_chain(&refs, |_| Box::new(edgebus_wasm::MemState::default()))
    })
    .await
    .map_err(|e| Response::error(ErrorCode::PluginInvalid, e.to_string()))?
}

/// Encodes outputs so each keeps the offset of its source record: a run of
/// one-output-per-input records with consecutive source offsets shares a
/// batch; anything else gets a batch of its own at the source offset.
fn offset_batches(inputs: &[StoredRecord], outputs: Vec<(usize, PluginRecord)>) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut run: Option<(BatchBuilder, u64, u64)> = None;
    let flush = |run: &mut Option<(BatchBuilder, u64, u64)>, out: &mut Vec<Bytes>| {
        if let Some((builder, base, _)) = run.take() {
            let mut bytes = BytesMut::from(&builder.finish(ProducerStamp::NONE)[..]);
            edgebus_proto::batch::set_base_offset(&mut bytes, base);
            out.push(bytes.freeze());
        }
    };
    let mut i = 0;
    while i < outputs.len() {
        let index = outputs[i].0;
        let group = outputs[i..].iter().take_while(|(j, _)| *j == index).count();
        let offset = inputs[index].offset;
        for (_, record) in &outputs[i..i + group] {
            let continues = group == 1 && run.as_ref().is_some_and(|(_, _, next)| *next == offset);
            if !continues {
                flush(&mut run, &mut out);
                run = Some((BatchBuilder::new(), offset, offset));
            }
            let (builder, _, next) = run.as_mut().expect("set above");
            builder.push(&from_plugin(record.clone()));
            *next = offset + 1;
            if group > 1 {
                flush(&mut run, &mut out);
            }
        }
        i += group;
    }
    flush(&mut run, &mut out);
    out
}

/// Sends a `Fetched` frame whose batches go out as their own chunks, never
/// copied into the frame buffer.
async fn send_fetched(
    feed: &mut Feed<'_>,
    read: edgebus_store::ReadBatches,
    next_offset: u64,
) -> Result<(), quinn::WriteError> {
    feed.buf.clear();
    let len = read.batches.iter().map(Bytes::len).sum();
    edgebus_proto::frame::encode_fetched_head(
        feed.correlation_id,
        read.offsets.log_start,
        read.offsets.log_end,
        next_offset,
        len,
        &mut feed.buf,
    );
    let mut chunks = Vec::with_capacity(read.batches.len() + 1);
    chunks.push(feed.buf.split().freeze());
    chunks.extend(read.batches);
    feed.send.write_all_chunks(&mut chunks).await
}

async fn send_response(
    send: &mut quinn::SendStream,
    correlation_id: u32,
    response: Response,
    buf: &mut BytesMut,
) -> Result<(), WireError> {
    buf.clear();
    response.encode(correlation_id, buf);
    wire::write_frames(send, buf).await
}
