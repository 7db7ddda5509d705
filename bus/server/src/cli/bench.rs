//! `edgebus bench produce | consume | e2e`.
//!
//! Starts its own broker in a temporary directory unless `--broker` is
//! given, creates a fresh topic, and reports records/s, MB/s (10^6 bytes of
//! record value) and latency percentiles from an HDR histogram.
//!
//! - `produce`: latency is send-to-ack per record.
//! - `consume`: the records are produced first (untimed); the timed part is
//!   reading them all back from the earliest offset. No latency is reported.
//! - `e2e`: producer and consumers run together; latency is send-to-receive
//!   per record, read from a timestamp the producer writes into each value.
//! - `commit`: consumer-group offset commits/s; latency is per commit.
//! - `rebalance`: time from a member's death to a completed rebalance; the
//!   latency figures are those times.
//! - `mirror`: an edge and a hub of its own; backlog drain and link
//!   compression (see [`mirror`]).
//!
//! On a broker of the user's (`--broker`) the bench changes nothing it did
//! not make: the plugins it needs are registered under names of its own,
//! and its topic, dead-letter topic, groups and plugins are removed when it
//! ends, also after an error or Ctrl-C.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use clap::{Args, ValueEnum};
use edgebus_client::{
    Client, ClientConfig, ClientError, Compression, DeliveryFuture, GroupConfig, GroupConsumer,
    PartitionOffset, PluginRef, Position, Producer, ProducerConfig, Record, SubscribeConfig,
    Subscription, TopicSpec,
};
use edgebus_proto::ErrorCode;
use edgebus_proto::frame::{Request, Response};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::connect::parse_duration;
use super::plugin::parse_plugin_ref;
use super::{AcksArg, ConnectArgs, Failure, Output};
use edgebus::config::Config;

mod failover;
mod mirror;

/// `rebalance`'s group session timeout unless `--session-ms` says.
const REBALANCE_SESSION_MS: u64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Time producing.
    Produce,
    /// Time reading back records produced beforehand.
    Consume,
    /// Time producing and consuming together; latency is end to end.
    E2e,
    /// Offset commits/s from `--window` concurrent committers, `--records`
    /// commits in all.
    Commit,
    /// Time from a group member's death to the other two owning all
    /// partitions, over `--rounds` rounds.
    Rebalance,
    /// Time from a partition leader's SIGKILL to the first `acks=all`
    /// produce its successor acknowledges, over `--rounds` kills, on a
    /// three-node cluster the bench starts itself.
    Failover,
    /// Drain of a `--records` backlog from an edge to a hub while
    /// `--rate` records/s (default 5 MB/s) keep coming, and the link's
    /// zstd ratio on JSON sensor records; brokers of its own only.
    Mirror,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  edgebus bench produce --records 200000 --size 1024          # on a broker of its own, in a temp dir
  edgebus bench consume --broker localhost:7171 --json --filter 'json-filter:field=n,op=<,value=0'
  edgebus bench produce --acks all --broker 127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103 --ca ca.pem
  edgebus bench failover --rounds 10                           # three nodes of its own, leader SIGKILLed")]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    mode: Mode,
    /// Records to send.
    #[arg(long, default_value_t = 200_000)]
    records: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Partitions of the bench topic.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Acknowledgement level.
    #[arg(long, value_enum, default_value_t)]
    acks: AcksArg,
    /// Batches in flight per partition.
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Producer batch size in bytes.
    #[arg(long, default_value_t = edgebus_client::producer::DEFAULT_BATCH_MAX_BYTES)]
    batch_bytes: usize,
    /// Producer linger in milliseconds; 0 (the SDK's default) batches
    /// adaptively.
    #[arg(long, default_value_t = 0)]
    linger_ms: u64,
    /// Send at this steady rate (records/s); 0 sends as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// `produce`, `e2e`: records waiting for their ack at most, the way an
    /// application with that many requests open would send; 0 is no limit
    /// (as many as the producer's window and queue take).
    #[arg(long, default_value_t = 0)]
    in_flight: usize,
    /// `rebalance`, `failover`: how many deaths to time.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// `rebalance`: the members' session timeout in milliseconds (1000 by
    /// default); `failover`: the cluster's (6000 by default).
    #[arg(long)]
    session_ms: Option<u64>,
    /// Run this bundled plugin on the bench topic's ingest path,
    /// `NAME[:key=value,…]`; repeat for a chain. It is registered for the
    /// run under a name of the bench's own and removed after.
    #[arg(long = "ingest", value_parser = parse_plugin_ref)]
    ingest: Vec<PluginRef>,
    /// `consume`/`e2e`: have the broker run this bundled plugin on the read
    /// path, `NAME[:key=value,…]`; repeat for a chain.
    #[arg(long = "filter", value_parser = parse_plugin_ref)]
    filters: Vec<PluginRef>,
    /// Values are JSON objects `{"n":…,"pad":"…"}` of about `--size` bytes
    /// (for plugin benches) instead of raw bytes.
    #[arg(long)]
    json: bool,
    /// Values are JSON objects like a sensor feed's, `{"n":…,"sensor":…,
    /// "celsius":…,"note":…}`, of about `--size` bytes, 1,024 distinct ones
    /// in turn: data compression can be measured on, where `--json` repeats
    /// one value.
    #[arg(long, conflicts_with = "json")]
    sensor_json: bool,
    /// Producer compression (none, lz4, zstd); the report adds the bytes
    /// stored and the compression ratio.
    #[arg(long, default_value = "none")]
    compression: Compression,
    /// Use this broker (HOST:PORT, or a cluster's list A1,A2,A3) instead
    /// of starting one in a temp dir.
    #[arg(long)]
    broker: Option<String>,
    /// CA of `--broker` (default: the current profile's, else the local CA
    /// of the default data dir).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Give up when `--broker` does not answer within this long.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// `json` prints one object with the results.
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

struct Report {
    records: u64,
    value_bytes: u64,
    elapsed: Duration,
    latency_us: Option<Histogram<u64>>,
}

pub async fn run(args: BenchArgs) -> Result<(), Failure> {
    if args.mode == Mode::Failover {
        return failover::run(&args).await;
    }
    if args.mode == Mode::Mirror {
        return mirror::run(&args).await;
    }
    let (client, local) = connect(&args).await?;
    let mut made = Made {
        topic: format!(
            "bench-{}-{}",
            std::process::id(),
            edgebus::retention::now_ms()
        ),
        ..Made::default()
    };
    // Ctrl-C ends the run early but still cleans up.
    let outcome = tokio::select! {
        outcome = bench(&client, &args, &mut made) => outcome,
        _ = tokio::signal::ctrl_c() => Err(Failure::other("interrupted")),
    };
    made.remove(&client).await;
    if let Some((broker, _dir)) = local {
        broker.shutdown().await;
    }
    outcome
}

/// What the bench made on the broker, to remove when it ends however it
/// ends.
#[derive(Debug, Default)]
struct Made {
    topic: String,
    topic_created: bool,
    groups: Vec<String>,
    /// Plugin name the user gave → the name registered for this run.
    plugins: BTreeMap<String, String>,
}

impl Made {
    /// The bench's own name for a plugin the user named.
    fn plugin_name(&self, name: &str) -> String {
        format!("{}-{name}", self.topic)
    }

    /// Deletes what the bench made; what is already gone is fine, anything
    /// else is reported for the user to remove.
    async fn remove(&self, client: &Client) {
        let mut requests = Vec::new();
        if self.topic_created {
            requests.push(Request::DeleteTopic {
                name: self.topic.clone(),
            });
            requests.push(Request::DeleteTopic {
                name: edgebus::dlq::dlq_topic(&self.topic),
            });
        }
        for group in &self.groups {
            requests.push(Request::DeleteGroup {
                group: group.clone(),
            });
        }
        for name in self.plugins.values() {
            requests.push(Request::PluginRemove { name: name.clone() });
        }
        for request in requests {
            let client = match &request {
                Request::DeleteGroup { group } => client.coordinator(group).await,
                _ => client.clone(),
            };
            match client.request(&request).await {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.code(),
                        Some(
                            ErrorCode::UnknownTopic
                                | ErrorCode::UnknownGroup
                                | ErrorCode::UnknownPlugin
                        )
                    ) => {}
                Err(e) => eprintln!("warning: bench cleanup: {request:?}: {e}"),
            }
        }
    }
}

/// The consumer groups a bench of `mode` commits for.
fn groups(topic: &str, args: &BenchArgs) -> Vec<String> {
    match args.mode {
        Mode::Commit => (0..args.window.max(1) as u64)
            .map(|t| commit_group(topic, t))
            .collect(),
        Mode::Rebalance => vec![rebalance_group(topic)],
        _ => Vec::new(),
    }
}

/// Sets up the topic and plugins, runs the measurement and reports it.
async fn bench(client: &Client, args: &BenchArgs, made: &mut Made) -> Result<(), Failure> {
    let topic = made.topic.clone();
    client
        .create_topic(TopicSpec {
            name: topic.clone(),
            partitions: args.partitions,
            retention_ms: -1,
            retention_bytes: -1,
            max_message_bytes: (args.size as u32).saturating_add(1024).max(1 << 20),
            compression: edgebus_proto::batch::Compression::None,
        })
        .await?;
    made.topic_created = true;
    made.groups = groups(&topic, args);
    let args = &register_plugins(client, args, made).await?;
    attach_ingest(client, &topic, args).await?;
    let report = match args.mode {
        Mode::Produce => produce(client, &topic, args, progress(args)).await?,
        Mode::Consume => {
            produce(client, &topic, args, ProgressBar::hidden()).await?;
            consume(client, &topic, args, progress(args), false).await?
        }
        Mode::E2e => {
            let consumer = {
                let (client, topic) = (client.clone(), topic.clone());
                let bench = args_clone(args);
                tokio::spawn(async move {
                    consume(&client, &topic, &bench, ProgressBar::hidden(), true).await
                })
            };
            produce(client, &topic, args, progress(args)).await?;
            consumer.await.map_err(Failure::other)??
        }
        Mode::Commit => commits(client, &topic, args, progress(args)).await?,
        Mode::Rebalance => rebalance(client, &topic, args).await?,
        Mode::Failover => unreachable!("failover runs a cluster of its own"),
        Mode::Mirror => unreachable!("mirror runs an edge and a hub of its own"),
    };
    let stored = if args.compression == Compression::None {
        None
    } else {
        Some(stored_bytes(client, &topic, args.partitions).await?)
    };
    print_report(args, &report, stored);
    Ok(())
}

fn args_clone(a: &BenchArgs) -> BenchArgs {
    BenchArgs {
        mode: a.mode,
        records: a.records,
        size: a.size,
        partitions: a.partitions,
        acks: a.acks,
        window: a.window,
        batch_bytes: a.batch_bytes,
        linger_ms: a.linger_ms,
        rate: a.rate,
        in_flight: a.in_flight,
        rounds: a.rounds,
        session_ms: a.session_ms,
        ingest: a.ingest.clone(),
        filters: a.filters.clone(),
        json: a.json,
        sensor_json: a.sensor_json,
        compression: a.compression,
        broker: a.broker.clone(),
        ca: a.ca.clone(),
        connect_timeout: a.connect_timeout,
        output: a.output,
    }
}

type LocalBroker = Option<(edgebus::RunningBroker, tempfile::TempDir)>;

async fn connect(args: &BenchArgs) -> Result<(Client, LocalBroker), Failure> {
    if let Some(broker) = &args.broker {
        let client = ConnectArgs::for_broker(broker.clone(), args.ca.clone(), args.connect_timeout)
            .connect()
            .await?;
        return Ok((client, None));
    }
    let dir = tempfile::tempdir().map_err(Failure::other)?;
    let (broker, client) = start_local(dir.path()).await?;
    Ok((client, Some((broker, dir))))
}

/// A broker of the bench's own on loopback with its data in `dir`, and a
/// client of it.
async fn start_local(dir: &std::path::Path) -> Result<(edgebus::RunningBroker, Client), Failure> {
    let config = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: dir.to_owned(),
        ..Config::default()
    };
    let broker = edgebus::start(config).await.map_err(Failure::other)?;
    let ca = broker
        .local_ca
        .clone()
        .ok_or_else(|| Failure::other("bench broker has no local CA"))?;
    let client = Client::connect(ClientConfig::new(broker.addr, ca)).await?;
    Ok((broker, client))
}

fn progress(args: &BenchArgs) -> ProgressBar {
    if args.output == Output::Json {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(args.records);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} records {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Registers the bundled plugins the bench names under names of its own
/// (so a plugin of the user's with the same name is never replaced) and
/// returns the arguments with the chains naming those.
async fn register_plugins(
    client: &Client,
    args: &BenchArgs,
    made: &mut Made,
) -> Result<BenchArgs, Failure> {
    let names: std::collections::BTreeSet<&str> = args
        .ingest
        .iter()
        .chain(&args.filters)
        .map(|p| p.name.as_str())
        .collect();
    for name in names {
        let wasm = edgebus::bundled::find(name)
            .ok_or_else(|| {
                Failure::other(format!(
                    "no bundled plugin {name:?}; the bundled plugins are: {}",
                    edgebus::bundled::names()
                ))
            })?
            .wasm;
        let own = made.plugin_name(name);
        // Recorded first: a registration whose answer is lost may still
        // have happened.
        made.plugins.insert(name.to_owned(), own.clone());
        client
            .request(&Request::PluginAdd {
                name: own,
                wasm: wasm.into(),
            })
            .await?;
    }
    let rename = |chain: &[PluginRef]| -> Vec<PluginRef> {
        chain
            .iter()
            .map(|p| PluginRef {
                name: made.plugins[&p.name].clone(),
                params: p.params.clone(),
            })
            .collect()
    };
    let mut renamed = args_clone(args);
    renamed.ingest = rename(&args.ingest);
    renamed.filters = rename(&args.filters);
    Ok(renamed)
}

/// Attaches `--ingest` to the bench topic.
async fn attach_ingest(client: &Client, topic: &str, args: &BenchArgs) -> Result<(), Failure> {
    if !args.ingest.is_empty() {
        client
            .request(&Request::SetIngest {
                topic: topic.to_owned(),
                chain: args.ingest.clone(),
                on_failure: edgebus_client::FailurePolicy::DeadLetter,
            })
            .await?;
    }
    Ok(())
}

/// A JSON object of `size` bytes with a numeric field `n` (= 42) and padding.
/// Distinct values the bench cycles through: enough that no batch repeats
/// one, so compression sees data like a sensor feed's, not one value
/// repeated.
const VALUE_POOL: usize = 1024;

/// JSON objects of about `size` bytes, like a sensor feed's: a sequence
/// number `n` (never negative, for the plugin benches), a sensor, a reading,
/// a status and a note drawn from a small vocabulary, deterministically.
fn sensor_json(size: usize) -> Vec<Bytes> {
    const WORDS: [&str; 16] = [
        "ok",
        "warm",
        "cold",
        "drift",
        "sensor",
        "gateway",
        "battery",
        "signal",
        "north",
        "south",
        "pump",
        "valve",
        "line",
        "rack",
        "calibrated",
        "restart",
    ];
    const STATUS: [&str; 4] = ["ok", "degraded", "offline", "maintenance"];
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as usize
    };
    (0..VALUE_POOL)
        .map(|n| {
            let head = format!(
                r#"{{"n":{n},"sensor":"s-{:03}","site":"site-{}","celsius":{}.{:02},"status":"{}","note":""#,
                next() % 200,
                next() % 12,
                next() % 60,
                next() % 100,
                STATUS[next() % STATUS.len()]
            );
            let mut note = String::new();
            while head.len() + note.len() + 2 < size {
                if !note.is_empty() {
                    note.push(' ');
                }
                note.push_str(WORDS[next() % WORDS.len()]);
                note.push_str(&(next() % 1000).to_string());
            }
            note.truncate(size.saturating_sub(head.len() + 2));
            Bytes::from(format!("{head}{note}\"}}"))
        })
        .collect()
}

/// The value of record `i`; in e2e mode its first 8 bytes carry the send
/// time in microseconds since `base`.
fn value(template: &Bytes, base: Instant, stamp: bool) -> Bytes {
    if !stamp || template.len() < 8 {
        return template.clone();
    }
    let mut v = BytesMut::with_capacity(template.len());
    v.put_u64(base.elapsed().as_micros() as u64);
    v.extend_from_slice(&template[8..]);
    v.freeze()
}

async fn produce(
    client: &Client,
    topic: &str,
    args: &BenchArgs,
    bar: ProgressBar,
) -> Result<Report, Failure> {
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: args.acks.into(),
            linger: Duration::from_millis(args.linger_ms),
            batch_max_bytes: args.batch_bytes,
            window: args.window,
            compression: args.compression,
            ..ProducerConfig::default()
        },
    )
    .await?;
    let templates = if args.sensor_json {
        sensor_json(args.size)
    } else if args.json {
        let head = r#"{"n":42,"pad":""#;
        let pad = args.size.saturating_sub(head.len() + 2);
        vec![Bytes::from(format!("{head}{}\"}}", "x".repeat(pad)))]
    } else {
        vec![Bytes::from(
            (0..args.size).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
        )]
    };
    let (tx, rx) = mpsc::channel::<Sent>(65536);
    let collector = tokio::spawn(collect_acks(rx, bar.clone()));
    let open = (args.in_flight > 0)
        .then(|| Arc::new(Semaphore::new(args.in_flight.min(Semaphore::MAX_PERMITS))));
    let start = Instant::now();
    let base = *BASE;
    let stamp = args.mode == Mode::E2e;
    for i in 0..args.records {
        if args.rate > 0 {
            let due = start + Duration::from_secs_f64(i as f64 / args.rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let template = &templates[i as usize % templates.len()];
        let record = Record::new(value(template, base, stamp), 0);
        let permit = match &open {
            Some(open) => Some(open.clone().acquire_owned().await.map_err(Failure::other)?),
            None => None,
        };
        let fut = producer.send(topic, record).await?;
        if tx.send((Instant::now(), fut, permit)).await.is_err() {
            break;
        }
    }
    producer.flush().await?;
    drop(tx);
    let histogram = collector.await.map_err(Failure::other)??;
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    Ok(Report {
        records: args.records,
        value_bytes: args.records * args.size as u64,
        elapsed,
        latency_us: (args.acks != AcksArg::None).then_some(histogram),
    })
}

static BASE: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

/// A record handed to the producer: when, its ack to come, and its place
/// among `--in-flight`, given back with the ack.
type Sent = (Instant, DeliveryFuture, Option<OwnedSemaphorePermit>);

async fn collect_acks(
    mut rx: mpsc::Receiver<Sent>,
    bar: ProgressBar,
) -> Result<Histogram<u64>, ClientError> {
    let mut histogram = new_histogram();
    let mut pending = FuturesUnordered::new();
    let mut open = true;
    let mut done = 0u64;
    while open || !pending.is_empty() {
        tokio::select! {
            item = rx.recv(), if open => match item {
                Some((sent, fut, permit)) => pending.push(async move {
                    let result = fut.await;
                    drop(permit);
                    (sent, result)
                }),
                None => open = false,
            },
            Some((sent, result)) = pending.next() => {
                result?;
                let _ = histogram.record(sent.elapsed().as_micros() as u64);
                done += 1;
                if done.is_multiple_of(1024) {
                    bar.set_position(done);
                }
            }
        }
    }
    Ok(histogram)
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

async fn consume(
    client: &Client,
    topic: &str,
    args: &BenchArgs,
    bar: ProgressBar,
    measure_latency: bool,
) -> Result<Report, Failure> {
    let received = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) =
        mpsc::channel::<Result<Histogram<u64>, ClientError>>(args.partitions as usize);
    let start = Instant::now();
    for p in 0..args.partitions {
        let mut sub = Subscription::start(
            client.clone(),
            topic,
            p,
            Position::Earliest,
            SubscribeConfig {
                chain: args.filters.clone(),
                ..SubscribeConfig::default()
            },
        )
        .await?;
        let (received, tx, total) = (received.clone(), tx.clone(), args.records);
        let base = *BASE;
        // With a read-path filter fewer records arrive than were produced;
        // the subscription's position says when the broker has scanned
        // everything produced (`consume` produces before it starts).
        let scan_end = if args.filters.is_empty() || measure_latency {
            None
        } else {
            Some(client.list_offset(topic, p, Position::Latest).await?)
        };
        tokio::spawn(async move {
            let mut histogram = new_histogram();
            let mut position = sub.position_watch();
            while received.load(Ordering::Relaxed) < total
                && scan_end.is_none_or(|end| sub.position().is_none_or(|at| at < end))
            {
                // Wake on a record, on the scan position moving (a filter may
                // deliver nothing), or on another partition finishing the count.
                let item = tokio::select! {
                    item = sub.next() => Ok(item),
                    _ = position.changed() => Err(()),
                    () = tokio::time::sleep(Duration::from_millis(200)) => Err(()),
                };
                match item {
                    Ok(Some(Ok(record))) => {
                        if measure_latency && record.value.len() >= 8 {
                            let sent = u64::from_be_bytes(
                                record.value[..8].try_into().expect("8 bytes checked"),
                            );
                            let now = base.elapsed().as_micros() as u64;
                            let _ = histogram.record(now.saturating_sub(sent).max(1));
                        }
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Some(Err(e))) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                    Ok(None) => break,
                    Err(_) => {}
                }
            }
            let _ = tx.send(Ok(histogram)).await;
        });
    }
    drop(tx);
    let mut histogram = new_histogram();
    let mut finished = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while finished < args.partitions {
        tokio::select! {
            part = rx.recv() => match part {
                Some(part) => {
                    histogram.add(part?).map_err(Failure::other)?;
                    finished += 1;
                }
                None => break,
            },
            _ = tick.tick() => bar.set_position(received.load(Ordering::Relaxed)),
        }
    }
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    let delivered = received.load(Ordering::Relaxed);
    if !args.filters.is_empty() {
        eprintln!(
            "read-path filter delivered {delivered} of {} records scanned",
            args.records
        );
    }
    // Throughput counts the source records the broker scanned.
    let records = if args.filters.is_empty() {
        delivered
    } else {
        args.records
    };
    if records < args.records {
        return Err(Failure::other(format!(
            "consumed {records} of {} records",
            args.records
        )));
    }
    Ok(Report {
        records,
        value_bytes: records * args.size as u64,
        elapsed,
        latency_us: measure_latency.then_some(histogram),
    })
}

/// The group committer `t` of `commit` commits for.
fn commit_group(topic: &str, t: u64) -> String {
    format!("{topic}-commit-{t}")
}

/// The group `rebalance` runs its members in.
fn rebalance_group(topic: &str) -> String {
    format!("{topic}-rebalance")
}

/// `--window` tasks each commit offsets for a group of their own in a loop;
/// the broker's writer puts every commit waiting at once into one fsync.
async fn commits(
    client: &Client,
    topic: &str,
    args: &BenchArgs,
    bar: ProgressBar,
) -> Result<Report, Failure> {
    let tasks = args.window.max(1) as u64;
    let per_task = args.records.div_ceil(tasks);
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (topic, bar) = (topic.to_owned(), bar.clone());
        let client = client.coordinator(&commit_group(&topic, t)).await;
        handles.push(tokio::spawn(async move {
            let mut histogram = new_histogram();
            for i in 0..per_task {
                let request = Request::CommitOffsets {
                    group: commit_group(&topic, t),
                    member_id: String::new(),
                    epoch: 0,
                    offsets: vec![PartitionOffset {
                        topic: topic.clone(),
                        partition: 0,
                        offset: i,
                    }],
                };
                let sent = Instant::now();
                client.request(&request).await?;
                let _ = histogram.record(sent.elapsed().as_micros() as u64);
                bar.inc(1);
            }
            Ok::<_, ClientError>(histogram)
        }));
    }
    let mut histogram = new_histogram();
    for h in handles {
        histogram
            .add(h.await.map_err(Failure::other)??)
            .map_err(Failure::other)?;
    }
    bar.finish_and_clear();
    Ok(Report {
        records: per_task * tasks,
        value_bytes: 0,
        elapsed: start.elapsed(),
        latency_us: Some(histogram),
    })
}

/// Three members share the topic; one dies (no commit, no leave) and the
/// time until the other two own every partition is recorded. Latency
/// figures are those times; throughput figures are meaningless here.
async fn rebalance(client: &Client, topic: &str, args: &BenchArgs) -> Result<Report, Failure> {
    let session = Duration::from_millis(args.session_ms.unwrap_or(REBALANCE_SESSION_MS));
    let config = || {
        let mut c = GroupConfig::new(rebalance_group(topic), vec![topic.to_owned()]);
        c.session_timeout = session;
        c
    };
    let mut histogram = new_histogram();
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(GroupConsumer::join(client.clone(), config()).await?);
    }
    let start = Instant::now();
    for _ in 0..args.rounds {
        wait_owned(&members, args.partitions, |sets| {
            sets.iter().all(|s| !s.is_empty())
        })
        .await?;
        let died = Instant::now();
        members.remove(0).abort();
        wait_owned(&members, args.partitions, |_| true).await?;
        let _ = histogram.record(died.elapsed().as_micros() as u64);
        members.push(GroupConsumer::join(client.clone(), config()).await?);
    }
    for m in members {
        m.close().await?;
    }
    Ok(Report {
        records: u64::from(args.rounds),
        value_bytes: 0,
        elapsed: start.elapsed(),
        latency_us: Some(histogram),
    })
}

/// Waits until the members own every partition exactly once and `also`
/// holds for their sets.
async fn wait_owned(
    members: &[GroupConsumer],
    partitions: u32,
    also: impl Fn(&[Vec<edgebus_client::TopicPartition>]) -> bool,
) -> Result<(), Failure> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let sets: Vec<_> = members
            .iter()
            .map(|m| m.assignment().borrow().clone())
            .collect();
        let total: usize = sets.iter().map(Vec::len).sum();
        let unique: std::collections::BTreeSet<_> = sets.iter().flatten().collect();
        if total == partitions as usize && unique.len() == total && also(&sets) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Failure::other(format!("group never settled: {sets:?}")));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Bytes the broker stores for the topic's batches, as stored (compressed),
/// read back after the run.
async fn stored_bytes(client: &Client, topic: &str, partitions: u32) -> Result<u64, Failure> {
    let mut total = 0u64;
    for partition in 0..partitions {
        let mut from = 0;
        loop {
            let request = Request::Fetch {
                topic: topic.to_owned(),
                partition,
                from: Position::Offset(from),
                max_bytes: 4 << 20,
            };
            match client.request(&request).await? {
                Response::Fetched {
                    next_offset,
                    log_end,
                    batches,
                    ..
                } => {
                    total += batches.len() as u64;
                    if batches.is_empty() || next_offset >= log_end {
                        break;
                    }
                    from = next_offset;
                }
                other => return Err(Failure::other(format!("unexpected reply {other:?}"))),
            }
        }
    }
    Ok(total)
}

fn print_report(args: &BenchArgs, r: &Report, stored_bytes: Option<u64>) {
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    let ratio = stored_bytes.map(|s| r.value_bytes as f64 / s.max(1) as f64);
    let records_per_s = r.records as f64 / secs;
    let mb_per_s = r.value_bytes as f64 / 1e6 / secs;
    let pct = |q: f64| {
        r.latency_us
            .as_ref()
            .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
    };
    match args.output {
        o @ (Output::Json | Output::Yaml) => o.emit(&json!({
            "mode": format!("{:?}", args.mode).to_lowercase(),
            "records": r.records,
            "size": args.size,
            "partitions": args.partitions,
            "acks": format!("{:?}", args.acks).to_lowercase(),
            "window": args.window,
            "in_flight": args.in_flight,
            "elapsed_s": secs,
            "records_per_s": records_per_s,
            "mb_per_s": mb_per_s,
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
            "p999_ms": pct(0.999),
            "compression": args.compression.name(),
            "stored_bytes": stored_bytes,
            "compression_ratio": ratio,
        })),
        Output::Text => {
            match args.mode {
                Mode::Commit => println!(
                    "commit: {} offset commits in {secs:.2} s: {records_per_s:.0} commits/s",
                    r.records
                ),
                Mode::Rebalance => println!(
                    "rebalance: {} member deaths, session timeout {} ms",
                    r.records,
                    args.session_ms.unwrap_or(REBALANCE_SESSION_MS)
                ),
                _ => println!(
                    "{:?}: {} records of {} B in {:.2} s: {:.0} records/s, {:.1} MB/s",
                    args.mode, r.records, args.size, secs, records_per_s, mb_per_s
                ),
            }
            if let (Some(p50), Some(p99), Some(p999)) = (pct(0.5), pct(0.99), pct(0.999)) {
                println!("latency ms: p50 {p50:.3}  p99 {p99:.3}  p99.9 {p999:.3}");
            }
            if let (Some(stored), Some(ratio)) = (stored_bytes, ratio) {
                println!(
                    "{}: {:.1} MB stored for {:.1} MB of values, ratio {ratio:.2}",
                    args.compression,
                    stored as f64 / 1e6,
                    r.value_bytes as f64 / 1e6
                );
            }
        }
    }
}
