//! `edgebus bench mirror`: an edge and a hub broker in temp dirs on
//! 127.0.0.1, a mirror between them. The mirror is paused while
//! `--records` records of `--size` bytes (JSON sensor records) build a
//! backlog on the edge; then it resumes while a producer keeps writing at
//! `--rate` records/s (default: 5 MB/s of values). Reported: the time until
//! the mirror has no lag, the drain rate (the backlog over that time) and
//! the link's throughput (everything it delivered over that time), next to
//! the produce rate; and the link's bytes on the wire per MB of records
//! with zstd.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgebus_client::{Client, Producer, ProducerConfig, Record, TopicSpec};
use edgebus_proto::compression::Compression;
use edgebus_proto::frame::{FailurePolicy, MirrorDescription, MirrorSpec, Request, Response};
use serde_json::json;

use super::{BenchArgs, Failure, Output, sensor_json};

/// The produce rate that continues during the drain unless `--rate` says
/// otherwise (the target: drain at 3× this).
const DEFAULT_PRODUCE_BYTES_PER_S: u64 = 5_000_000;

/// How often the bench asks the edge for the mirror's lag.
const POLL: Duration = Duration::from_millis(50);

/// The longest a drain may take before the bench gives up.
const DRAIN_MAX: Duration = Duration::from_secs(600);

const TOPIC: &str = "bench-mirror";

async fn mirror(edge: &Client, request: Request) -> Result<MirrorDescription, Failure> {
    match edge.request(&request).await? {
        Response::Mirrors(mut m) if m.len() == 1 => Ok(m.remove(0)),
        other => Err(Failure::other(format!("unexpected answer {other:?}"))),
    }
}

fn describe() -> Request {
    Request::MirrorDescribe {
        name: "bench".into(),
    }
}

/// Produces `records` values from `templates` as fast as the window
/// allows, or at `rate` records/s until `stop`.
async fn produce(
    client: &Client,
    templates: &[Bytes],
    records: u64,
    rate: Option<(u64, Arc<AtomicBool>)>,
) -> Result<u64, Failure> {
    let producer = Producer::new(client.clone(), ProducerConfig::default()).await?;
    let start = Instant::now();
    let mut sent = 0;
    while sent < records {
        if let Some((rate, stop)) = &rate {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let due = start + Duration::from_secs_f64(sent as f64 / *rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let value = templates[sent as usize % templates.len()].clone();
        // Deliveries are checked by the flush below.
        drop(producer.send(TOPIC, Record::new(value, 0)).await?);
        sent += 1;
    }
    producer.flush().await?;
    Ok(sent)
}

pub(super) async fn run(args: &BenchArgs) -> Result<(), Failure> {
    let (hub_dir, edge_dir) = (
        tempfile::tempdir().map_err(Failure::other)?,
        tempfile::tempdir().map_err(Failure::other)?,
    );
    let (hub, _hub_client) = super::start_local(hub_dir.path()).await?;
    let (edge, client) = super::start_local(edge_dir.path()).await?;
    let outcome = measure(args, &hub, &client).await;
    edge.shutdown().await;
    hub.shutdown().await;
    outcome
}

async fn measure(
    args: &BenchArgs,
    hub: &edgebus::RunningBroker,
    edge: &Client,
) -> Result<(), Failure> {
    let size = args.size.max(64);
    let templates = sensor_json(size);
    let rate = match args.rate {
        0 => DEFAULT_PRODUCE_BYTES_PER_S / size as u64,
        r => r,
    };
    edge.create_topic(TopicSpec::new(TOPIC, args.partitions))
        .await?;
    let ca = hub
        .local_ca
        .as_ref()
        .ok_or_else(|| Failure::other("hub has no local CA"))?;
    let spec = MirrorSpec {
        name: "bench".into(),
        topic: TOPIC.into(),
        to: hub.addr.to_string(),
        to_topic: TOPIC.into(),
        ca_pem: std::fs::read(ca).map_err(Failure::other)?.into(),
        cert_pem: Bytes::new(),
        key_pem: Bytes::new(),
        max_bytes_per_s: 0,
        compression: Compression::Zstd,
        chain: Vec::new(),
        on_failure: FailurePolicy::default(),
    };
    mirror(edge, Request::MirrorCreate(spec)).await?;
    mirror(
        edge,
        Request::MirrorPause {
            name: "bench".into(),
        },
    )
    .await?;
    let built = Instant::now();
    let backlog = produce(edge, &templates, args.records, None).await?;
    // The producer's flush returns once its batches are sent; the backlog
    // is built when the edge's log ends account for all of them.
    let before = loop {
        let m = mirror(edge, describe()).await?;
        if m.partitions.iter().map(|p| p.log_end).sum::<u64>() >= backlog {
            break m;
        }
        if built.elapsed() > DRAIN_MAX {
            return Err(Failure::other("the backlog was never acknowledged"));
        }
        tokio::time::sleep(POLL).await;
    };
    let build_s = built.elapsed().as_secs_f64();
    let backlog_bytes: u64 = before.partitions.iter().map(|p| p.lag_bytes).sum();

    let stop = Arc::new(AtomicBool::new(false));
    let steady = {
        let (edge, templates, stop) = (edge.clone(), templates.clone(), stop.clone());
        tokio::spawn(async move { produce(&edge, &templates, u64::MAX, Some((rate, stop))).await })
    };
    let resumed = Instant::now();
    mirror(
        edge,
        Request::MirrorResume {
            name: "bench".into(),
        },
    )
    .await?;
    // Drained: the hub holds every partition up to where the edge's log
    // ended when the mirror resumed, while the producer kept going.
    let after = loop {
        tokio::time::sleep(POLL).await;
        let m = mirror(edge, describe()).await?;
        let drained = before.partitions.iter().all(|b| {
            m.partitions
                .iter()
                .any(|p| p.partition == b.partition && p.delivered >= Some(b.log_end))
        });
        if drained {
            break m;
        }
        if resumed.elapsed() > DRAIN_MAX {
            return Err(Failure::other(format!(
                "the mirror did not drain within {DRAIN_MAX:?}: {m:?}"
            )));
        }
    };
    let drain_s = resumed.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let produced_during = steady.await.map_err(Failure::other)??;
    let value_mb = |records: u64| records as f64 * size as f64 / 1e6;
    let drain_mb_per_s = value_mb(backlog) / drain_s;
    let link_mb_per_s = value_mb(after.records_sent) / drain_s;
    let produce_mb_per_s = value_mb(rate);
    let wire_per_mb = after.bytes_sent as f64 / value_mb(after.records_sent).max(1e-9);
    let ratio = after.batch_bytes_sent as f64 / after.bytes_sent.max(1) as f64;
    match args.output {
        o @ (Output::Json | Output::Yaml) => o.emit(&json!({
            "mode": "mirror",
            "backlog_records": backlog,
            "backlog_mb": value_mb(backlog),
            "backlog_stored_bytes": backlog_bytes,
            "backlog_build_s": build_s,
            "produce_mb_per_s": produce_mb_per_s,
            "records_produced_during_drain": produced_during,
            "drain_s": drain_s,
            "records_sent": after.records_sent,
            "delivered": after.partitions.iter().map(|p| p.delivered).collect::<Vec<_>>(),
            "backlog_log_ends": before.partitions.iter().map(|p| p.log_end).collect::<Vec<_>>(),
            "drain_mb_per_s": drain_mb_per_s,
            "link_mb_per_s": link_mb_per_s,
            "drain_over_produce": drain_mb_per_s / produce_mb_per_s,
            "link_compression": "zstd",
            "wire_bytes_per_mb": wire_per_mb,
            "zstd_ratio": ratio,
        })),
        Output::Text => {
            println!(
                "mirror: backlog of {backlog} records ({:.0} MB of {size} B JSON sensor values) \
                 built in {build_s:.1} s",
                value_mb(backlog)
            );
            println!(
                "drain: {drain_s:.2} s with {produce_mb_per_s:.1} MB/s produced meanwhile: \
                 backlog drained at {drain_mb_per_s:.1} MB/s ({:.1}x the produce rate), \
                 link {link_mb_per_s:.1} MB/s",
                drain_mb_per_s / produce_mb_per_s
            );
            println!(
                "zstd on the link: {:.0} bytes on the wire per MB of records, ratio {ratio:.2} \
                 over the stored batches",
                wire_per_mb
            );
        }
    }
    Ok(())
}
