//! A NATS JetStream publish load generator (async-nats), to put NATS
//! beside `edgebus bench produce` in one sitting: one publisher sends
//! `--records` messages of `--size` bytes to a file-backed stream, with at
//! most `--in-flight` waiting for their JetStream ack, or paced to
//! `--rate` messages/s, and prints messages per second and the
//! publish→ack latency percentiles.
//!
//! ```sh
//! nats-server -js -sd /tmp/nats &
//! cargo run --release -p edgebus-examples --example nats_load -- \
//!     --records 300000 --size 100 --in-flight 256
//! # the edgebus side of the same workload:
//! edgebus bench produce --records 300000 --size 100 --in-flight 256 --window 8
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream::{self, stream};
use futures::stream::{FuturesUnordered, StreamExt};

const STREAM: &str = "BENCH";
const SUBJECT: &str = "bench";

struct Args {
    url: String,
    records: usize,
    size: usize,
    in_flight: usize,
    /// Messages per second; 0: as fast as `in_flight` allows.
    rate: u64,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        url: "127.0.0.1:4222".into(),
        records: 100_000,
        size: 1024,
        in_flight: 256,
        rate: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => a.url = value,
            "--records" => a.records = value.parse::<usize>()?.max(1),
            "--size" => a.size = value.parse()?,
            "--in-flight" => a.in_flight = value.parse::<usize>()?.max(1),
            "--rate" => a.rate = value.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    // The client's own cap on publishes awaiting their ack would hold a
    // publish until an ack future is polled: no lower than ours.
    let js = jetstream::context::ContextBuilder::new()
        .max_ack_inflight(a.in_flight)
        .build(async_nats::connect(&a.url).await?);
    // A fresh stream per run, so every run starts from an empty one.
    let _ = js.delete_stream(STREAM).await;
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec![SUBJECT.into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let payload = bytes::Bytes::from(vec![b'x'; a.size]);
    let mut waiting = FuturesUnordered::new();
    let mut latencies = Vec::with_capacity(a.records);
    let started = Instant::now();
    for i in 0..a.records {
        if a.rate > 0 {
            // Acks are taken while waiting: the client holds back
            // publishes while too many of its acks are unread.
            let due = started + Duration::from_secs_f64(i as f64 / a.rate as f64);
            let pause = tokio::time::sleep_until(due.into());
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    () = &mut pause => break,
                    Some(latency) = waiting.next(), if !waiting.is_empty() => {
                        latencies.push(latency?);
                    }
                }
            }
        }
        while waiting.len() >= a.in_flight {
            latencies.push(waiting.next().await.expect("not empty")?);
        }
        let ack = js.publish(SUBJECT, payload.clone()).await?;
        let sent = Instant::now();
        waiting.push(async move { ack.await.map(|_| sent.elapsed()) });
    }
    while let Some(latency) = waiting.next().await {
        latencies.push(latency?);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "{} messages of {} B in {:.2} s: {:.0} msg/s, {:.1} MB/s; publish→ack p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms",
        latencies.len(),
        a.size,
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        (latencies.len() * a.size) as f64 / 1e6 / elapsed.as_secs_f64(),
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(0.999).as_secs_f64() * 1e3,
    );
    Ok(())
}
