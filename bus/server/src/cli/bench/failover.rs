//! `edgebus bench failover`: time from a partition leader's SIGKILL to the
//! first `acks=all` produce acknowledged by its successor.
//!
//! Starts three `edgebus serve` processes of its own (this binary) on
//! loopback in a temp dir, one cluster CA for all, and a topic of one
//! partition with three replicas. A producer sends at `--rate` with
//! `acks=all` through a client that knows all three nodes. Each round
//! SIGKILLs the partition's leader, waits for the first record *sent after
//! the kill* to be acknowledged (so by the new leader), restarts the dead
//! node and waits until it is back in the in-sync set. The figure therefore
//! includes what a user's client pays: the session timeout, the election,
//! and the client finding the new leader.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use edgebus_client::{Acks, Client, ClientConfig, Producer, ProducerConfig, Record, TopicSpec};
use edgebus_proto::frame::{PartitionReplication, Request, Response};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

use super::{BenchArgs, Failure, Output, new_histogram, value};

const TOPIC: &str = "bench-failover";
/// Cluster size: one node down at a time still leaves a majority for the
/// control log and `min.insync.replicas` 2 for the partition.
const NODES: u64 = 3;
/// How long any one step (a node starting, the cluster forming, a failover,
/// a rejoin) may take before the bench gives up.
const STEP_LIMIT: Duration = Duration::from_secs(90);
/// Records/s when `--rate` is 0.
const DEFAULT_RATE: u64 = 1000;
/// The cluster's own default session timeout.
const DEFAULT_SESSION_MS: u64 = 6000;

/// One `edgebus serve` child.
struct NodeProcess {
    id: u64,
    addr: SocketAddr,
    data: PathBuf,
    child: Option<Child>,
}

/// Three nodes of this binary in `dir`.
struct LocalCluster {
    dir: tempfile::TempDir,
    nodes: Vec<NodeProcess>,
}

impl LocalCluster {
    async fn start(session_ms: u64) -> Result<LocalCluster, Failure> {
        let dir = tempfile::tempdir().map_err(Failure::other)?;
        edgebus::tls::init_cluster_ca(&dir.path().join("ca")).map_err(Failure::other)?;
        std::fs::write(
            dir.path().join("edgebus.toml"),
            format!("[cluster]\nsession_timeout_ms = {session_ms}\n"),
        )
        .map_err(Failure::other)?;
        let mut nodes = Vec::new();
        for id in 1..=NODES {
            nodes.push(NodeProcess {
                id,
                addr: free_addr()?,
                data: dir.path().join(format!("node{id}")),
                child: None,
            });
        }
        let mut cluster = LocalCluster { dir, nodes };
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i).await?;
        }
        Ok(cluster)
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca").join("ca.pem")
    }

    /// Starts node `i` and waits for its `listening` line.
    async fn spawn(&mut self, i: usize) -> Result<(), Failure> {
        let exe = std::env::current_exe().map_err(Failure::other)?;
        let mut command = Command::new(exe);
        let node = &self.nodes[i];
        command
            .arg("serve")
            .arg("--data")
            .arg(&node.data)
            .args(["--listen", &node.addr.to_string()])
            .args(["--node-id", &node.id.to_string()])
            .arg("--config")
            .arg(self.dir.path().join("edgebus.toml"))
            .arg("--cluster-ca")
            .arg(self.dir.path().join("ca"));
        for peer in &self.nodes {
            command.args(["--peer", &format!("{}={}", peer.id, peer.addr)]);
        }
        let mut child = command
            .env("RUST_LOG", "warn,openraft=off")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(Failure::other)?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(STEP_LIMIT, lines.next_line())
            .await
            .map_err(|_| Failure::other(format!("node {} did not start", node.id)))?
            .map_err(Failure::other)?;
        if !first.as_deref().is_some_and(|l| l.contains("listening")) {
            return Err(Failure::other(format!(
                "node {} did not start: {first:?}",
                node.id
            )));
        }
        // Drained so the node never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// SIGKILLs node `id`.
    async fn kill(&mut self, id: u64) -> Result<usize, Failure> {
        let i = self
            .nodes
            .iter()
            .position(|n| n.id == id)
            .ok_or_else(|| Failure::other(format!("no node {id}")))?;
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill().await.map_err(Failure::other)?;
        }
        Ok(i)
    }
}

/// A loopback UDP port free right now.
fn free_addr() -> Result<SocketAddr, Failure> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(Failure::other)?;
    socket.local_addr().map_err(Failure::other)
}

pub(super) async fn run(args: &BenchArgs) -> Result<(), Failure> {
    if args.broker.is_some() {
        return Err(Failure::new(
            2,
            "bench failover kills the nodes it measures, so it starts a cluster of its own; \
             --broker is not accepted",
        ));
    }
    let session_ms = args.session_ms.unwrap_or(DEFAULT_SESSION_MS);
    let mut cluster = LocalCluster::start(session_ms).await?;
    let mut config = ClientConfig::new(cluster.nodes[0].addr, cluster.ca());
    config.bootstrap = cluster.nodes[1..].iter().map(|n| n.addr.into()).collect();
    config.connect_timeout = Duration::from_secs(3);
    let client = Client::connect(config).await?;
    // One client per node for metadata, so a dead node's answer never
    // stands in for the others'.
    let mut nodes = Vec::new();
    for node in &cluster.nodes {
        nodes.push(Client::connect(ClientConfig::new(node.addr, cluster.ca())).await?);
    }
    let topic = TopicSpec {
        max_message_bytes: (args.size as u32).saturating_add(1024).max(1 << 20),
        ..TopicSpec::new(TOPIC, 1)
    };
    until("the cluster to form and take the topic", || async {
        client.create_topic(topic.clone()).await.is_ok()
    })
    .await?;
    until("three in-sync replicas", || async {
        partition(&nodes).await.is_some_and(|p| p.isr.len() == 3)
    })
    .await?;

    let (acked_tx, acked) = watch::channel(None);
    let producer = tokio::spawn(produce(client.clone(), args.size, rate(args), acked_tx));
    let mut histogram = new_histogram();
    let mut failovers = Vec::new();
    for round in 1..=args.rounds {
        until("a first acknowledged record", || async {
            acked.borrow().is_some()
        })
        .await?;
        let leader = partition(&nodes)
            .await
            .and_then(|p| p.leader)
            .ok_or_else(|| Failure::other("the partition has no leader"))?;
        let killed_at = Instant::now();
        let i = cluster.kill(leader).await?;
        let mut acked = acked.clone();
        let took = tokio::time::timeout(STEP_LIMIT, async {
            loop {
                if let Some((sent, at)) = *acked.borrow_and_update()
                    && sent >= killed_at
                {
                    return Ok(at - killed_at);
                }
                if acked.changed().await.is_err() {
                    return Err(Failure::other("the producer stopped"));
                }
            }
        })
        .await
        .map_err(|_| {
            Failure::other(format!("no new leader acknowledged within {STEP_LIMIT:?}"))
        })??;
        failovers.push(took);
        let _ = histogram.record(took.as_micros() as u64);
        if args.output == Output::Text {
            println!(
                "kill {round}: node {leader} -> first ack after {:.2} s",
                took.as_secs_f64()
            );
        }
        cluster.spawn(i).await?;
        until("the restarted node to rejoin the in-sync set", || async {
            partition(&nodes)
                .await
                .is_some_and(|p| p.isr.len() == 3 && p.leader.is_some())
        })
        .await?;
    }
    producer.abort();
    client.close().await;
    for node in nodes {
        node.close().await;
    }
    report(args, session_ms, &failovers, &histogram);
    Ok(())
}

fn rate(args: &BenchArgs) -> u64 {
    match args.rate {
        0 => DEFAULT_RATE,
        r => r,
    }
}

/// Sends a record every `1 / rate` s with `acks=all`, and publishes the
/// send and ack times of each acknowledged one.
async fn produce(
    client: Client,
    size: usize,
    rate: u64,
    acked: watch::Sender<Option<(Instant, Instant)>>,
) -> Result<(), Failure> {
    let producer = Producer::new(
        client,
        ProducerConfig {
            acks: Acks::All,
            ..ProducerConfig::default()
        },
    )
    .await?;
    let (tx, mut rx) = mpsc::channel(64 * 1024);
    tokio::spawn(async move {
        while let Some((sent, delivery)) = rx.recv().await {
            let delivery: edgebus_client::DeliveryFuture = delivery;
            if delivery.await.is_ok() {
                acked.send_replace(Some((sent, Instant::now())));
            }
        }
    });
    let template = bytes::Bytes::from(vec![b'x'; size]);
    let start = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let record = Record::now(value(&template, start, false));
        let sent = Instant::now();
        let delivery = producer.send_to(TOPIC, 0, record).await?;
        if tx.send((sent, delivery)).await.is_err() {
            return Ok(());
        }
    }
}

/// Partition 0 as the cluster sees it: of the nodes that answer within a
/// second, the answer with the highest leader epoch.
async fn partition(nodes: &[Client]) -> Option<PartitionReplication> {
    let request = Request::PartitionStates {
        topic: TOPIC.to_owned(),
    };
    let answers = futures::future::join_all(nodes.iter().map(|client| async {
        match tokio::time::timeout(Duration::from_secs(1), client.request(&request)).await {
            Ok(Ok(Response::PartitionStates(states))) => {
                states.into_iter().find(|p| p.partition == 0)
            }
            _ => None,
        }
    }))
    .await;
    answers.into_iter().flatten().max_by_key(|p| p.leader_epoch)
}

/// Polls `done` until it holds, for at most [`STEP_LIMIT`].
async fn until<F, Fut>(what: &str, done: F) -> Result<(), Failure>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + STEP_LIMIT;
    while !done().await {
        if Instant::now() > deadline {
            return Err(Failure::other(format!("waited {STEP_LIMIT:?} for {what}")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

fn report(args: &BenchArgs, session_ms: u64, failovers: &[Duration], h: &Histogram<u64>) {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let target_ms = 2 * session_ms + 500;
    match args.output {
        o @ (Output::Json | Output::Yaml) => o.emit(&json!({
            "mode": "failover",
            "kills": failovers.len(),
            "session_timeout_ms": session_ms,
            "failover_ms": failovers.iter().map(|d| d.as_secs_f64() * 1000.0).collect::<Vec<_>>(),
            "median_ms": ms(0.5),
            "max_ms": h.max() as f64 / 1000.0,
            "target_ms": target_ms,
        })),
        Output::Text => println!(
            "failover: {} leader kills, session timeout {session_ms} ms: median {:.0} ms, \
             max {:.0} ms (target <= {target_ms} ms)",
            failovers.len(),
            ms(0.5),
            h.max() as f64 / 1000.0
        ),
    }
}
