//! An MQTT QoS 1 load generator (rumqttc clients), for comparing brokers:
//! N clients each publish M messages of B bytes, at most W unacknowledged
//! each, optionally paced to a total rate; it prints messages per second
//! and the publish→PUBACK latency percentiles.
//!
//! ```sh
//! edgebus serve --mqtt-listen 127.0.0.1:1883 --mqtt-map 'load/#=load' &
//! edgebus topic create load --partitions 4
//! cargo run --release -p edgebus-examples --example mqtt_load -- \
//!     --port 1883 --clients 100 --messages 2000 --size 100
//! # latency at a steady 2,000 messages/s in total:
//! cargo run --release -p edgebus-examples --example mqtt_load -- \
//!     --port 1883 --clients 10 --messages 2000 --size 100 --rate 2000
//! ```
//!
//! The same command against `mosquitto -p 1883` measures Mosquitto.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

struct Args {
    host: String,
    port: u16,
    clients: usize,
    messages: usize,
    size: usize,
    /// Total messages per second over all clients; 0: as fast as acked.
    rate: u64,
    inflight: u16,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        host: "127.0.0.1".into(),
        port: 1883,
        clients: 100,
        messages: 1000,
        size: 100,
        rate: 0,
        inflight: 32,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--host" => a.host = value,
            "--port" => a.port = value.parse()?,
            "--clients" => a.clients = value.parse()?,
            "--messages" => a.messages = value.parse()?,
            "--size" => a.size = value.parse()?,
            "--rate" => a.rate = value.parse()?,
            "--inflight" => a.inflight = value.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

/// One client's run: every message's publish→PUBACK latency.
async fn client(a: &Args, index: usize) -> anyhow::Result<Vec<Duration>> {
    let mut options = MqttOptions::new(format!("load-{index}"), a.host.clone(), a.port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(a.inflight)
        .set_clean_session(true);
    let (client, mut events) = AsyncClient::new(options, a.inflight as usize * 2);
    // Without it Nagle holds a publish until the previous one's TCP ACK,
    // which a broker that answers after an fsync sends later.
    let mut network = events.network_options();
    network.set_tcp_nodelay(true);
    events.set_network_options(network);
    let (messages, size, clients) = (a.messages, a.size, a.clients);
    let pace = (a.rate > 0).then(|| Duration::from_secs_f64(a.clients as f64 / a.rate as f64));
    let topic = format!("load/client-{index}");
    let publisher = tokio::spawn(async move {
        let payload = vec![b'x'; size];
        // Clients are spread over the period, so the total rate is steady
        // rather than bursts of one message per client.
        let mut tick = pace.map(|period| {
            let offset = period.mul_f64(index as f64 / clients as f64);
            tokio::time::interval_at(tokio::time::Instant::now() + offset, period)
        });
        for _ in 0..messages {
            if let Some(t) = tick.as_mut() {
                t.tick().await;
            }
            client
                .publish(&topic, QoS::AtLeastOnce, false, payload.clone())
                .await?;
        }
        anyhow::Ok(client)
    });
    let mut sent: HashMap<u16, Instant> = HashMap::new();
    let mut latencies = Vec::with_capacity(messages);
    while latencies.len() < messages {
        match events.poll().await? {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                sent.insert(pkid, Instant::now());
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(at) = sent.remove(&ack.pkid) {
                    latencies.push(at.elapsed());
                }
            }
            _ => {}
        }
    }
    let client = publisher.await??;
    client.disconnect().await?;
    Ok(latencies)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = std::sync::Arc::new(args()?);
    let started = Instant::now();
    let runs: Vec<_> = (0..a.clients)
        .map(|i| {
            let a = a.clone();
            tokio::spawn(async move { client(&a, i).await })
        })
        .collect();
    let mut all = Vec::with_capacity(a.clients * a.messages);
    for run in runs {
        all.extend(run.await??);
    }
    let elapsed = started.elapsed();
    all.sort_unstable();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    println!(
        "{} messages of {} B from {} clients in {:.2} s: {:.0} msg/s; publish→PUBACK p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        all.len(),
        a.size,
        a.clients,
        elapsed.as_secs_f64(),
        all.len() as f64 / elapsed.as_secs_f64(),
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        all[all.len() - 1].as_secs_f64() * 1e3,
    );
    Ok(())
}
