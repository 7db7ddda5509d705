//! One mirror's link: dial the hub, open the destination, then stream each
//! source partition's stored batches from the hub's log end, reconnecting
//! with jittered, capped backoff after any failure.
//!
//! Each partition has its own long-lived stream with one append in flight:
//! the next append starts at the offset the hub answered, so a lost answer
//! (the link dropped mid-append) is settled on reconnect by asking the
//! hub's log ends again, never by guessing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use edgebus_proto::ErrorCode;
use edgebus_proto::compression::{self, Compression};
use edgebus_proto::frame::{ALPN, Request, Response};
use edgebus_proto::limits::DEFAULT_MAX_FRAME_BYTES;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use edgebus_proto::batch::{self, Record};
use edgebus_proto::limits::DEFAULT_BATCH_MAX_BYTES;

use super::pace::Pacer;
use super::{Env, LinkState, MirrorConfig, Shared, Stored, random_u64, save};
use crate::chain::{self, AttachPoint, ChainRunError, ChainRunner, Halt, OutputLimits};
use crate::retention::now_ms;
use crate::wire;

/// The header naming a filtered link's record's source partition (the
/// same a read-path dead letter carries).
pub const SOURCE_PARTITION_HEADER: &str = "edgebus-source-partition";

/// The header naming its source offset.
pub const SOURCE_OFFSET_HEADER: &str = "edgebus-source-offset";

/// How often a connected link stores its progress at most: the hub holds
/// the truth, the stored copy feeds `mirror describe` after a restart.
const PROGRESS_SAVE_INTERVAL: Duration = Duration::from_millis(500);

/// How long a partition with nothing new waits before it checks again
/// without a wake-up (a missed notification costs this much, no more).
const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// Why a link session ended.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    /// The hub cannot be reached, or the connection failed.
    #[error("{0}")]
    Connection(String),
    /// The hub's log end moved from under the link (a lost answer): reopen.
    #[error("{0}")]
    Resync(String),
    /// The hub refuses this mirror until an operator acts.
    #[error("{0}")]
    Refused(String),
}

/// The QUIC client config of a mirror: the hub's CA as the only root, the
/// mirror's client certificate if it has one, keep-alive and idle timeout
/// from `[mirror]`.
pub(super) fn client_config(
    stored: &Stored,
    config: &MirrorConfig,
) -> Result<quinn::ClientConfig, String> {
    let certs = |pem: &str, what: &str| -> Result<Vec<CertificateDer<'static>>, String> {
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{what}: {e}"))?;
        if certs.is_empty() {
            return Err(format!("{what}: no certificate in the PEM"));
        }
        Ok(certs)
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(&stored.ca_pem, "the hub's CA")? {
        roots.add(cert).map_err(|e| format!("the hub's CA: {e}"))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    let mut tls = if stored.cert_pem.is_empty() {
        builder.with_no_client_auth()
    } else {
        let key = PrivateKeyDer::from_pem_slice(stored.key_pem.as_bytes())
            .map_err(|e| format!("the client key: {e}"))?;
        builder
            .with_client_auth_cert(certs(&stored.cert_pem, "the client certificate")?, key)
            .map_err(|e| format!("the client identity: {e}"))?
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(Duration::from_millis(config.keep_alive_ms.max(1))))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_millis(config.idle_timeout_ms))
                .map_err(|e| format!("mirror.idle_timeout_ms: {e}"))?,
        ))
        .stream_receive_window((8u32 << 20).into())
        .send_window(32 << 20)
        // Loss on a cellular link is mostly not congestion: a loss-based
        // controller at 5 % loss and 100 ms RTT settles near 60 KB/s
        // (Mathis), BBR paces to the measured bandwidth instead.
        .congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    client.transport_config(Arc::new(transport));
    Ok(client)
}

/// Runs a mirror until its task is aborted (pause, delete, shutdown).
pub(super) async fn run(env: Env, shared: Arc<Shared>) {
    let mut failures: u32 = 0;
    loop {
        shared.set_status(LinkState::Connecting, "");
        let error = match session(&env, &shared, &mut failures).await {
            Ok(()) => continue,
            Err(e) => e,
        };
        let name = shared.stored().name.clone();
        if let LinkError::Refused(reason) = &error {
            tracing::error!(mirror = %name, %reason, "mirror halted: the hub refuses it");
            shared.set_status(LinkState::Halted, reason.clone());
            return;
        }
        let wait = backoff(&env.config, failures);
        failures = failures.saturating_add(1);
        let until_ms = now_ms() + wait.as_millis() as i64;
        tracing::info!(mirror = %name, error = %error, wait_ms = wait.as_millis() as u64, "mirror link down; backing off");
        shared.set_status(LinkState::BackingOff { until_ms }, error.to_string());
        tokio::time::sleep(wait).await;
    }
}

/// The wait after `failures` failures in a row: doubling from
/// `backoff_initial_ms` up to `backoff_max_ms`, then a random part of it
/// ("full jitter" over the upper half), so many edges cut off by one outage
/// do not all redial at once.
fn backoff(config: &MirrorConfig, failures: u32) -> Duration {
    let ceiling = config
        .backoff_initial_ms
        .saturating_mul(1u64 << failures.min(20))
        .min(config.backoff_max_ms)
        .max(1);
    let half = ceiling / 2;
    Duration::from_millis(half + random_u64() % (ceiling - half + 1))
}

/// One connection: open, then stream every partition until one fails.
async fn session(env: &Env, shared: &Arc<Shared>, failures: &mut u32) -> Result<(), LinkError> {
    let stored = shared.stored().clone();
    let spec = env
        .topics
        .spec(&stored.topic)
        .map_err(|e| LinkError::Refused(format!("source topic: {e}")))?;
    let connect_timeout = Duration::from_millis(env.config.connect_timeout_ms);
    let conn = tokio::time::timeout(connect_timeout, dial(&stored, &env.config))
        .await
        .map_err(|_| {
            LinkError::Connection(format!(
                "no answer from {} within {connect_timeout:?}",
                stored.to
            ))
        })??;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| LinkError::Connection(e.to_string()))?;
    let open = Request::MirrorOpen {
        mirror: stored.id.clone(),
        topic: stored.to_topic.clone(),
        partitions: spec.partitions,
        filtered: !stored.chain.is_empty(),
    };
    let ends = match tokio::time::timeout(connect_timeout, call(&mut send, &mut recv, &open))
        .await
        .map_err(|_| LinkError::Connection("the hub did not answer the open".into()))??
    {
        Response::MirrorPositions(ends) if ends.len() == spec.partitions as usize => ends,
        other => {
            return Err(LinkError::Refused(format!(
                "unexpected open answer {other:?}"
            )));
        }
    };
    let _ = send.finish();
    {
        let mut s = shared.stored();
        for (partition, end) in ends.iter().enumerate() {
            s.delivered.insert(partition as u32, *end);
        }
    }
    let snapshot = shared.stored().clone();
    save(&env.writer, &snapshot)
        .await
        .map_err(|e| LinkError::Connection(format!("storing progress: {e}")))?;
    *failures = 0;
    shared.set_status(LinkState::Connected, "");
    tracing::info!(mirror = %stored.name, hub = %stored.to, "mirror connected");
    let streams = ends.into_iter().enumerate().map(|(partition, end)| {
        stream_partition(env, shared, &conn, &stored, partition as u32, end)
    });
    let saver = async {
        let mut saved = shared.stored().delivered.clone();
        loop {
            tokio::time::sleep(PROGRESS_SAVE_INTERVAL).await;
            let snapshot = shared.stored().clone();
            // An idle link writes nothing.
            if snapshot.delivered == saved {
                continue;
            }
            match save(&env.writer, &snapshot).await {
                Ok(()) => saved = snapshot.delivered,
                Err(e) => {
                    tracing::warn!(mirror = %snapshot.name, error = %e, "storing mirror progress failed");
                }
            }
        }
    };
    tokio::select! {
        result = futures::future::try_join_all(streams) => result.map(|_| ()),
        () = saver => Ok(()),
    }
}

async fn dial(stored: &Stored, config: &MirrorConfig) -> Result<quinn::Connection, LinkError> {
    let err = |e: &dyn std::fmt::Display| LinkError::Connection(format!("{}: {e}", stored.to));
    let addr: SocketAddr = tokio::net::lookup_host(&stored.to)
        .await
        .map_err(|e| err(&e))?
        .next()
        .ok_or_else(|| err(&"no address"))?;
    let host = stored
        .to
        .rsplit_once(':')
        .map_or(stored.to.as_str(), |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    // A certificate names a host; an address literal is checked as the
    // local CA's certificates name it.
    let server_name = if host.parse::<std::net::IpAddr>().is_ok() {
        "localhost"
    } else {
        host
    };
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().map_err(|e| err(&e))?
    } else {
        "0.0.0.0:0".parse().map_err(|e| err(&e))?
    };
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| err(&e))?;
    endpoint.set_default_client_config(client_config(stored, config).map_err(LinkError::Refused)?);
    endpoint
        .connect(addr, server_name)
        .map_err(|e| err(&e))?
        .await
        .map_err(|e| err(&e))
}

/// Sends one request and reads its answer; an error answer becomes a
/// [`LinkError`] by its code.
async fn call(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    request: &Request,
) -> Result<Response, LinkError> {
    let mut buf = BytesMut::new();
    request.encode(0, &mut buf);
    send.write_all(&buf)
        .await
        .map_err(|e| LinkError::Connection(e.to_string()))?;
    let body = wire::read_frame(recv, DEFAULT_MAX_FRAME_BYTES)
        .await
        .map_err(|e| LinkError::Connection(e.to_string()))?
        .ok_or_else(|| LinkError::Connection("the hub closed the stream".into()))?;
    let (_, response) =
        Response::decode(body).map_err(|e| LinkError::Connection(format!("answer: {e}")))?;
    match response {
        Response::Error { code, message } => Err(match ErrorCode::from_u16(code) {
            Some(ErrorCode::MirrorOffsetMismatch) => LinkError::Resync(message),
            Some(
                ErrorCode::MirrorConflict
                | ErrorCode::CorruptBatch
                | ErrorCode::InvalidRequest
                | ErrorCode::InvalidTopicConfig
                | ErrorCode::UnknownRequest,
            ) => LinkError::Refused(message),
            _ => LinkError::Connection(message),
        }),
        other => Ok(other),
    }
}

/// Streams one partition from `next` (the hub's log end) for as long as
/// the connection lives.
async fn stream_partition(
    env: &Env,
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    stored: &Stored,
    partition: u32,
    mut next: u64,
) -> Result<(), LinkError> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| LinkError::Connection(e.to_string()))?;
    let codec = stored.compression();
    let mut chain = (!stored.chain.is_empty()).then(|| LinkChain {
        runner: chain_runner(env, stored),
        halt: Halt::default(),
    });
    let mut pacer = Pacer::new(stored.max_bytes_per_s);
    let chunk = pacer.chunk_bytes(env.config.max_request_bytes);
    let mut grown = env.notifier.watch(&stored.topic, partition);
    loop {
        let read = env
            .reader
            .read_at(&stored.topic, partition, next, chunk)
            .await
            .map_err(|e| {
                LinkError::Connection(format!("reading {}/{partition}: {e}", stored.topic))
            })?;
        if read.offsets.log_start > next {
            // Retention deleted these undelivered (the backlog passed its
            // cap; counted and logged there): the hub skips their offsets
            // so the records after them keep theirs.
            let skip = Request::MirrorSkip {
                mirror: stored.id.clone(),
                topic: stored.to_topic.clone(),
                partition,
                from: next,
                to: read.offsets.log_start,
            };
            match call(&mut send, &mut recv, &skip).await? {
                Response::Offset { offset } => {
                    tracing::warn!(mirror = %stored.name, partition, from = next, to = offset, "hub copy skips records the edge deleted undelivered");
                    {
                        let mut s = shared.stored();
                        s.skipped_records += offset.saturating_sub(next);
                        s.delivered.insert(partition, offset);
                    }
                    next = offset;
                    let snapshot = shared.stored().clone();
                    save(&env.writer, &snapshot)
                        .await
                        .map_err(|e| LinkError::Connection(format!("storing progress: {e}")))?;
                    continue;
                }
                other => {
                    return Err(LinkError::Connection(format!(
                        "unexpected skip answer {other:?}"
                    )));
                }
            }
        }
        if read.batches.is_empty() {
            // Wait for the partition to grow; the timeout covers a wake-up
            // published before this watch saw the last value.
            let _ = tokio::time::timeout(IDLE_RECHECK, grown.changed()).await;
            continue;
        }
        if let Some(chain) = chain.as_mut() {
            let source_to = read
                .batches
                .last()
                .and_then(|b| edgebus_proto::batch::BatchHeader::parse(b).ok())
                .map_or(next, |h| h.next_offset());
            let outputs = chain
                .filter(env, shared, stored, partition, next, &read.batches)
                .await?;
            let records: u64 = outputs
                .iter()
                .filter_map(|b| edgebus_proto::batch::BatchHeader::parse(b).ok())
                .map(|h| u64::from(h.record_count))
                .sum();
            let raw_len: usize = outputs.iter().map(Bytes::len).sum();
            let payload = encode_payload(codec, outputs).await?;
            pacer.send(payload.len()).await;
            let wire_len = payload.len();
            let commit = Request::MirrorCommit {
                mirror: stored.id.clone(),
                topic: stored.to_topic.clone(),
                partition,
                source_from: next,
                source_to,
                compression: codec,
                payload,
            };
            let Response::Offset { offset } = call(&mut send, &mut recv, &commit).await? else {
                return Err(LinkError::Connection("unexpected commit answer".into()));
            };
            shared
                .bytes_sent
                .fetch_add(wire_len as u64, Ordering::Relaxed);
            shared
                .batch_bytes_sent
                .fetch_add(raw_len as u64, Ordering::Relaxed);
            shared.records_sent.fetch_add(records, Ordering::Relaxed);
            next = offset;
            shared.stored().delivered.insert(partition, next);
            continue;
        }
        let records: u64 = read
            .batches
            .iter()
            .filter_map(|b| edgebus_proto::batch::BatchHeader::parse(b).ok())
            .map(|h| u64::from(h.record_count))
            .sum();
        let raw_len: usize = read.batches.iter().map(Bytes::len).sum();
        let payload = encode_payload(codec, read.batches).await?;
        pacer.send(payload.len()).await;
        let wire_len = payload.len();
        let append = Request::MirrorAppend {
            mirror: stored.id.clone(),
            topic: stored.to_topic.clone(),
            partition,
            base_offset: next,
            compression: codec,
            payload,
        };
        match call(&mut send, &mut recv, &append).await? {
            Response::Offset { offset } => {
                shared
                    .bytes_sent
                    .fetch_add(wire_len as u64, Ordering::Relaxed);
                shared
                    .batch_bytes_sent
                    .fetch_add(raw_len as u64, Ordering::Relaxed);
                shared.records_sent.fetch_add(records, Ordering::Relaxed);
                next = offset;
                shared.stored().delivered.insert(partition, next);
            }
            other => {
                return Err(LinkError::Connection(format!(
                    "unexpected append answer {other:?}"
                )));
            }
        }
    }
}

/// The chain runner of a filtered link: a read-path attach point of the
/// source topic (its counters, its dead letters, written once per source
/// record however often a resend runs the chain again).
pub(super) fn chain_runner(env: &Env, stored: &Stored) -> ChainRunner {
    ChainRunner::new(
        env.registry.clone(),
        stored.chain(),
        stored.on_failure(),
        AttachPoint::ReadPath,
        env.attachments.read_counters(&stored.topic),
        chain::in_memory_state(),
    )
}

/// A filtered link's plugins and their halt backoff.
struct LinkChain {
    runner: ChainRunner,
    halt: Halt,
}

impl LinkChain {
    /// Runs the chain on stored batches from source offset `from` and
    /// returns the batches to send, each record carrying its source
    /// partition and offset in headers. A plugin failure under `halt` (or
    /// a rejection) pauses the link with backoff and runs the same records
    /// again.
    async fn filter(
        &mut self,
        env: &Env,
        shared: &Shared,
        stored: &Stored,
        partition: u32,
        from: u64,
        batches: &[Bytes],
    ) -> Result<Vec<Bytes>, LinkError> {
        let mut inputs = Vec::new();
        for b in batches {
            let records = batch::records(b)
                .map_err(|e| LinkError::Connection(format!("decoding a stored batch: {e}")))?;
            inputs.extend(records.into_iter().filter(|r| r.offset >= from));
        }
        let limits = OutputLimits {
            max_record_bytes: chain::MAX_OUTPUT_BATCH_BYTES,
            max_batch_bytes: chain::MAX_OUTPUT_BATCH_BYTES,
            overhead_per_input: batch::HEADER_LEN,
        };
        loop {
            match self
                .runner
                .run(&stored.topic, partition, &inputs, limits)
                .await
            {
                Ok(run) => {
                    self.halt.clear();
                    shared.set_status(LinkState::Connected, "");
                    if !run.dead_letters.is_empty() {
                        env.dead_letters
                            .append_once(&stored.topic, &run.dead_letters)
                            .await
                            .map_err(|e| LinkError::Connection(format!("dead letters: {e}")))?;
                    }
                    let records: Vec<Record> = run
                        .outputs
                        .into_iter()
                        .map(|(i, r)| {
                            r.with_header(SOURCE_PARTITION_HEADER, partition.to_string())
                                .with_header(SOURCE_OFFSET_HEADER, inputs[i].offset.to_string())
                        })
                        .collect();
                    return Ok(chain::batches(&records, DEFAULT_BATCH_MAX_BYTES));
                }
                Err(e @ (ChainRunError::Failed { .. } | ChainRunError::Rejected { .. })) => {
                    let pause = self.halt.trip(std::time::Instant::now());
                    let until_ms = now_ms() + pause.as_millis() as i64;
                    tracing::warn!(mirror = %stored.name, partition, error = %e, ?pause, "mirror link plugin failed; pausing");
                    shared.set_status(LinkState::BackingOff { until_ms }, e.to_string());
                    self.runner.reset();
                    tokio::time::sleep(pause).await;
                }
                Err(e) => {
                    return Err(LinkError::Connection(format!("the link's plugins: {e}")));
                }
            }
        }
    }
}

/// The batches back to back, compressed with `codec` off the async
/// workers.
async fn encode_payload(codec: Compression, batches: Vec<Bytes>) -> Result<Bytes, LinkError> {
    let joined: Vec<u8> = batches.concat();
    if codec == Compression::None {
        return Ok(Bytes::from(joined));
    }
    tokio::task::spawn_blocking(move || compression::compress(codec, &joined))
        .await
        .map_err(|e| LinkError::Connection(e.to_string()))?
        .map(Bytes::from)
        .map_err(|e| LinkError::Refused(format!("compressing the link payload: {e}")))
}
