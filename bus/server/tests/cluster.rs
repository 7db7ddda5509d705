//! A cluster of three `edgebus serve` processes on 127.0.0.1, started the
//! way the README says (`tls init`, then `serve --node-id --peer
//! --cluster-ca`), observed only through `edgebus cluster status`.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use common::{BIN, free_port};
use serde_json::Value;

/// Session timeout the nodes run with: short, so fencing shows quickly.
const SESSION_TIMEOUT_MS: u64 = 2_000;
/// How long a follower may lag before it leaves the in-sync set: short,
/// so `acks=all` with a dead follower resumes quickly.
const REPLICA_LAG_MS: u64 = 3_000;
/// Longest any state change below may take.
const LIMIT: Duration = Duration::from_secs(40);

struct Node {
    id: u64,
    addr: String,
    data: PathBuf,
    /// More `serve` arguments for this node.
    args: Vec<String>,
    process: Option<Child>,
}

/// Three nodes, SIGKILLed (by PID, through `Child`) when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
    /// Dropped after the nodes are killed.
    _permit: Permit,
}

/// Three-node clusters running at once, at most: the harness runs this
/// file's tests in parallel, and a dozen clusters (36 processes) on a
/// two-core machine starve each other past the timeouts below.
const MAX_CLUSTERS: usize = 3;

static RUNNING: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// One of [`MAX_CLUSTERS`] places, held while a cluster runs.
struct Permit;

impl Permit {
    fn take() -> Permit {
        let (count, freed) = &RUNNING;
        let mut running = count.lock().unwrap_or_else(PoisonError::into_inner);
        while *running >= MAX_CLUSTERS {
            running = freed.wait(running).unwrap_or_else(PoisonError::into_inner);
        }
        *running += 1;
        Permit
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let (count, freed) = &RUNNING;
        *count.lock().unwrap_or_else(PoisonError::into_inner) -= 1;
        freed.notify_one();
    }
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_with("")
    }

    /// Three nodes with `extra` appended to the `[cluster]` config table.
    fn start_with(extra: &str) -> Cluster {
        let mut cluster = Cluster::prepare(extra);
        for i in 0..3 {
            cluster.spawn(i);
        }
        cluster
    }

    /// [`Cluster::start_with`], before any node is started.
    fn prepare(extra: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let out = tls_init(dir.path());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(
            dir.path().join("edgebus.toml"),
            format!(
                "[cluster]\nsession_timeout_ms = {SESSION_TIMEOUT_MS}\n\
                 replica_lag_time_max_ms = {REPLICA_LAG_MS}\n{extra}"
            ),
        )
        .unwrap();
        let nodes = (1..=3)
            .map(|id| Node {
                id,
                addr: format!("127.0.0.1:{}", free_port()),
                data: dir.path().join(format!("node{id}")),
                args: Vec::new(),
                process: None,
            })
            .collect();
        Cluster {
            dir,
            nodes,
            _permit: Permit::take(),
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca").join("ca.pem")
    }

    fn spawn(&mut self, i: usize) {
        let peers: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.addr))
            .collect();
        let node = &self.nodes[i];
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--data"])
            .arg(&node.data)
            .args(["--listen", &node.addr, "--node-id", &node.id.to_string()])
            .arg("--config")
            .arg(self.dir.path().join("edgebus.toml"))
            .arg("--cluster-ca")
            .arg(self.dir.path().join("ca"));
        for peer in &peers {
            command.args(["--peer", peer]);
        }
        command.args(&node.args);
        let mut child = command
            .env("RUST_LOG", "warn,openraft=off")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("a line").expect("utf-8");
        assert!(
            first.contains("listening"),
            "unexpected first line: {first}"
        );
        thread::spawn(move || for _ in lines {});
        self.nodes[i].process = Some(child);
    }

    /// Stops node `i` with SIGTERM (a clean close of its store) and waits.
    fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].process.take() {
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
            let _ = common::wait_with_deadline(&mut child, LIMIT);
        }
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `cluster status --output json` through node `i`, if it answers.
    fn status(&self, i: usize) -> Option<Value> {
        let out = Command::new(BIN)
            .args(["cluster", "status", "--output", "json", "--broker"])
            .arg(&self.nodes[i].addr)
            .arg("--ca")
            .arg(self.ca())
            .args(["--connect-timeout", "2s"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// Polls node `i`'s status until `done` holds; panics after [`LIMIT`].
    fn wait_for(&self, i: usize, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + LIMIT;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(status) = self.status(i) {
                if done(&status) {
                    return status;
                }
                last = Some(status);
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!("{what}: not within {LIMIT:?}; last status {last:#?}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// `edgebus tls init DIR/ca`.
fn tls_init(dir: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(["tls", "init"])
        .arg(dir.join("ca"))
        .output()
        .unwrap()
}

fn controller(status: &Value) -> Option<u64> {
    status["controller"].as_u64()
}

fn up(status: &Value) -> Vec<u64> {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["up"] == true)
        .map(|n| n["id"].as_u64().unwrap())
        .collect()
}

fn data_dir_has(path: &Path, file: &str) -> bool {
    path.join(file).exists()
}

#[test]
fn three_nodes_elect_a_controller_and_replace_one_killed() {
    let mut cluster = Cluster::start();
    let status = cluster.wait_for(0, "a controller and three nodes up", |s| {
        controller(s).is_some() && up(s) == [1, 2, 3]
    });
    assert_eq!(status["mode"], "cluster");
    assert!(status["term"].as_u64().unwrap() >= 1);
    assert!(status["commit_index"].as_u64().unwrap() >= 1);
    let first = controller(&status).unwrap();
    assert_eq!(
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["controller"] == true)
            .count(),
        1
    );
    for node in &cluster.nodes {
        assert!(data_dir_has(&node.data, "control.redb"));
    }
    // Every node sees the same controller.
    for i in 1..3 {
        cluster.wait_for(i, "the same controller", |s| controller(s) == Some(first));
    }
    // A node that forwards a proposal to the controller answers once it has
    // applied it too: `bench` asks the node that created its topic about
    // it straight away (it failed with UnknownTopic about one run in ten
    // when the node answered before applying).
    let forwarder = (0..3).find(|&i| i as u64 + 1 != first).unwrap();
    for _ in 0..10 {
        let args = ["bench", "produce", "--records", "20", "--size", "10"];
        ok(
            &cluster,
            forwarder,
            &[&args[..], &["--partitions", "3", "--acks", "all"]].concat(),
        );
    }

    let victim = (first - 1) as usize;
    let witness = (victim + 1) % 3;
    let killed = Instant::now();
    cluster.kill(victim);
    let status = cluster.wait_for(witness, "a new controller, the old one down", |s| {
        controller(s).is_some_and(|c| c != first) && !up(s).contains(&first)
    });
    eprintln!(
        "controller {first} killed: node {} took over and fenced it within {:?}",
        controller(&status).unwrap(),
        killed.elapsed()
    );
    let term = status["term"].as_u64().unwrap();

    cluster.spawn(victim);
    cluster.wait_for(victim, "the restarted node back up, following", |s| {
        up(s) == [1, 2, 3] && controller(s).is_some() && s["term"].as_u64().unwrap() >= term
    });
}

#[test]
fn a_cluster_node_refuses_a_peer_list_without_itself() {
    let dir = tempfile::tempdir().unwrap();
    let out = tls_init(dir.path());
    assert!(out.status.success());
    let out = Command::new(BIN)
        .args(["serve", "--data"])
        .arg(dir.path().join("d"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args([
            "--node-id",
            "4",
            "--peer",
            "1=127.0.0.1:1",
            "--peer",
            "2=127.0.0.1:2",
        ])
        .arg("--cluster-ca")
        .arg(dir.path().join("ca"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("node 4 must be in the peer list"),
        "{stderr}"
    );

    let out = Command::new(BIN)
        .args(["serve", "--data"])
        .arg(dir.path().join("d"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--node-id", "1", "--peer", "1=127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--cluster-ca"), "{stderr}");

    let out = tls_init(dir.path());
    assert_eq!(
        out.status.code(),
        Some(4),
        "an existing CA is never replaced"
    );
}

impl Cluster {
    /// Runs a client command against node `i`.
    fn run(&self, i: usize, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .arg("--broker")
            .arg(&self.nodes[i].addr)
            .arg("--ca")
            .arg(self.ca())
            .args(["--connect-timeout", "2s"])
            .output()
            .unwrap()
    }

    /// Waits until node 1 sees a controller and all three nodes up.
    fn wait_until_up(&self) {
        self.wait_for(0, "a controller and three nodes up", |s| {
            controller(s).is_some() && up(s) == [1, 2, 3]
        });
    }

    /// `topic create NAME --partitions N` through node 1, which must work.
    fn create_topic(&self, name: &str, partitions: u32) {
        let out = self.run(
            0,
            &[
                "topic",
                "create",
                name,
                "--partitions",
                &partitions.to_string(),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `--broker` with every node: the client uses whichever answers and
    /// sends to the partition's leader.
    fn brokers(&self) -> String {
        let addrs: Vec<&str> = self.nodes.iter().map(|n| n.addr.as_str()).collect();
        addrs.join(",")
    }

    /// Produces `values` with `acks=all` through the broker list; returns
    /// the values acknowledged as stored, in order.
    fn produce(&self, values: &[String]) -> Vec<String> {
        self.produce_to("t", values)
    }

    /// [`Cluster::produce`] to `topic`.
    fn produce_to(&self, topic: &str, values: &[String]) -> Vec<String> {
        self.produce_with(topic, &[], values)
    }

    /// [`Cluster::produce_to`] with more `produce` arguments.
    fn produce_with(&self, topic: &str, args: &[&str], values: &[String]) -> Vec<String> {
        self.produce_acks(topic, args, values)
            .iter()
            .filter(|v| v["status"] == "stored")
            .map(|v| values[v["line"].as_u64().unwrap() as usize - 1].clone())
            .collect()
    }

    /// The JSON ack of each line [`Cluster::produce_with`] sends.
    fn produce_acks(&self, topic: &str, args: &[&str], values: &[String]) -> Vec<Value> {
        let mut child = Command::new(BIN)
            .args([
                "produce",
                topic,
                "--acks",
                "all",
                "--timeout-s",
                "20",
                "--output",
                "json",
            ])
            .args(args)
            .arg("--broker")
            .arg(self.brokers())
            .arg("--ca")
            .arg(self.ca())
            .args(["--connect-timeout", "2s"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let input = values.join("\n") + "\n";
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), input.as_bytes()).unwrap();
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect()
    }

    /// Partition 0 of topic `t` as `topic describe --output json` through
    /// node `i` shows it, once it answers.
    fn partition(&self, i: usize) -> Option<Value> {
        let out = self.run(i, &["topic", "describe", "t", "--output", "json"]);
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["replication"].get(0).cloned()
    }

    /// The index of the node leading partition 0 of `t`, asking any that
    /// answers.
    fn leader(&self) -> usize {
        let deadline = Instant::now() + LIMIT;
        loop {
            for i in 0..3 {
                if let Some(id) = self.partition(i).and_then(|p| p["leader"].as_u64()) {
                    return (id - 1) as usize;
                }
            }
            assert!(Instant::now() < deadline, "no leader within {LIMIT:?}");
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until all three nodes are in partition 0's in-sync set, so the
    /// next kill leaves two.
    fn wait_for_full_isr(&self) {
        let deadline = Instant::now() + LIMIT;
        while !(0..3).any(|i| {
            self.partition(i)
                .is_some_and(|p| p["isr"].as_array().is_some_and(|isr| isr.len() == 3))
        }) {
            assert!(
                Instant::now() < deadline,
                "the in-sync set never grew back to three within {LIMIT:?}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// The values of topic `t` node `i` serves, in offset order.
    fn consume(&self, i: usize) -> Option<Vec<String>> {
        self.consume_from(i, "t")
    }

    /// [`Cluster::consume`] of `topic`.
    fn consume_from(&self, i: usize, topic: &str) -> Option<Vec<String>> {
        self.consume_with(i, &[topic])
    }

    /// The values `consume ARGS` through node `i` prints, in order.
    fn consume_with(&self, i: usize, args: &[&str]) -> Option<Vec<String>> {
        let mut args = args.to_vec();
        args.splice(0..0, ["consume"]);
        args.extend(["--output", "json"]);
        let out = self.run(i, &args);
        out.status.success().then(|| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .map(|v| v["value"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
    }
}

/// `acks=all` through repeated leader kills: the leader of the one
/// partition is SIGKILLed after each round of produces (and restarted after
/// the next round, so one node is down at a time). Every acknowledged
/// record must then be on every node exactly once, in the order it was
/// acknowledged, the restarted ones included. `EDGEBUS_CLUSTER_KILLS`
/// sets the number of kills (3 by default).
#[test]
fn acknowledged_records_survive_killed_leaders_on_every_replica() {
    let kills: usize = std::env::var("EDGEBUS_CLUSTER_KILLS")
        .map(|n| n.parse().expect("EDGEBUS_CLUSTER_KILLS is a number"))
        .unwrap_or(3);
    let mut cluster = Cluster::start();
    cluster.wait_until_up();
    cluster.create_topic("t", 1);

    let mut acked: Vec<String> = Vec::new();
    let mut down: Option<usize> = None;
    let mut failovers = Vec::new();
    for round in 0..=kills {
        // Through the list of all three nodes, as a user would: the client
        // finds the partition's (new) leader by itself.
        let started = Instant::now();
        let values: Vec<String> = (0..20).map(|n| format!("r{round}-{n}")).collect();
        let stored = cluster.produce(&values);
        assert_eq!(
            stored, values,
            "round {round}: every record is acknowledged, in order, within the timeout"
        );
        acked.extend(stored);
        if round > 0 {
            failovers.push(started.elapsed());
        }
        if round == kills {
            break;
        }
        if let Some(i) = down.take() {
            cluster.spawn(i);
            cluster.wait_for_full_isr();
        }
        let leader = cluster.leader();
        cluster.kill(leader);
        down = Some(leader);
    }
    eprintln!(
        "{kills} leader kills; kill to all 20 records of the next round acknowledged: {failovers:?}"
    );
    if let Some(i) = down.take() {
        cluster.spawn(i);
    }
    assert!(acked.len() >= 20 * (kills + 1));

    for i in 0..3 {
        let deadline = Instant::now() + LIMIT;
        let mut last = None;
        loop {
            if let Some(values) = cluster.consume(i) {
                let served: Vec<&String> = values.iter().filter(|v| acked.contains(v)).collect();
                let expected: Vec<&String> = acked.iter().collect();
                if served == expected {
                    let mut seen = std::collections::HashSet::new();
                    assert!(
                        values.iter().all(|v| seen.insert(v)),
                        "node {} serves a record twice: {values:?}",
                        i + 1
                    );
                    break;
                }
                last = Some(values);
            }
            assert!(
                Instant::now() < deadline,
                "node {} never served every acknowledged record once, in order; acked {acked:?}, served {last:?}",
                i + 1
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A follower SIGKILLed while `acks=all` produce goes on: the leader drops
/// it from the in-sync set after the replica lag time (so produce resumes),
/// and once restarted it catches up from its own log and rejoins the set,
/// serving every acknowledged record.
#[test]
fn a_killed_follower_catches_up_and_rejoins_the_in_sync_set() {
    let mut cluster = Cluster::start();
    cluster.wait_until_up();
    cluster.create_topic("t", 1);
    let first: Vec<String> = (0..20).map(|n| format!("before-{n}")).collect();
    assert_eq!(cluster.produce(&first), first);

    let leader = cluster.leader();
    let follower = (leader + 1) % 3;
    let follower_id = cluster.nodes[follower].id;
    cluster.kill(follower);
    let second: Vec<String> = (0..20).map(|n| format!("while-down-{n}")).collect();
    assert_eq!(
        cluster.produce(&second),
        second,
        "acks=all goes on once the dead follower leaves the in-sync set"
    );
    let isr = |p: &Value| -> Vec<u64> {
        p["isr"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .collect()
    };
    let shrunk = cluster.partition(leader).expect("the leader answers");
    assert!(
        !isr(&shrunk).contains(&follower_id),
        "node {follower_id} is down, yet in the in-sync set: {shrunk}"
    );

    cluster.spawn(follower);
    let deadline = Instant::now() + LIMIT;
    loop {
        let p = cluster.partition(leader);
        let caught_up = p.as_ref().is_some_and(|p| {
            let ends = &p["log_ends"];
            isr(p).contains(&follower_id)
                && ends[follower_id.to_string()] == ends[(leader as u64 + 1).to_string()]
                && ends[follower_id.to_string()] == 40
        });
        if caught_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {follower_id} never rejoined the in-sync set at the leader's log end; last {p:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    let all: Vec<String> = first.into_iter().chain(second).collect();
    assert_eq!(cluster.consume(follower), Some(all));
}

/// `topic alter --partitions` grows a replicated topic: the controller
/// places the new partitions as the first were (leaders spread), every
/// node creates its copies, and each new partition takes `acks=all` writes
/// on its leader and serves them from every replica. Shrinking is refused.
#[test]
fn added_partitions_are_placed_replicated_and_served_by_every_node() {
    let cluster = Cluster::start();
    cluster.wait_until_up();
    cluster.create_topic("t", 2);
    let out = cluster.run(1, &["topic", "alter", "t", "--partitions", "1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("partitions can be added, not removed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let values = |p: u32| -> Vec<String> { (0..10).map(|n| format!("p{p}-{n}")).collect() };
    assert_eq!(
        cluster.produce_with("t", &["--partition", "0"], &values(0)),
        values(0)
    );

    ok(&cluster, 1, &["topic", "alter", "t", "--partitions", "5"]);
    let placed = |i: usize| -> Option<Vec<Value>> {
        let out = cluster.run(i, &["topic", "describe", "t", "--output", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let partitions = v["replication"].as_array()?.clone();
        let whole = partitions.len() == 5
            && partitions.iter().all(|p| {
                p["leader"].is_u64() && p["isr"].as_array().is_some_and(|isr| isr.len() == 3)
            });
        whole.then_some(partitions)
    };
    eventually("every node shows five led partitions, all in sync", || {
        (0..3).all(|i| placed(i).is_some())
    });
    let leaders: BTreeSet<u64> = placed(0)
        .unwrap()
        .iter()
        .map(|p| p["leader"].as_u64().unwrap())
        .collect();
    assert_eq!(leaders.len(), 3, "leaders spread over the nodes");

    for p in 1..5 {
        let partition = p.to_string();
        assert_eq!(
            cluster.produce_with("t", &["--partition", &partition], &values(p)),
            values(p),
            "partition {p}"
        );
    }
    for i in 0..3 {
        for p in 0..5 {
            let partition = p.to_string();
            eventually(&format!("node {} serves partition {p}", i + 1), || {
                cluster.consume_with(i, &["t", "--partition", &partition]) == Some(values(p))
            });
        }
    }
}

/// Dead letters on a cluster node: `<topic>.dlq` is a replicated topic,
/// each dead letter is stored on its leader with `acks=all` before the
/// batch it came from is acknowledged, the ack names where it went, every
/// node serves it, and it outlives the node that led it.
#[test]
fn dead_letters_are_replicated_and_outlive_their_leader() {
    let plugins = edgebus::bundled::ensure_built().expect("bundled plugins build");
    let wasm = plugins.join("trap_on.wasm");
    let mut cluster = Cluster::start_with(PLUGIN_DEADLINE);
    cluster.wait_until_up();
    ok(
        &cluster,
        0,
        &["plugin", "add", "trap", wasm.to_str().unwrap()],
    );
    cluster.create_topic("t", 1);
    ok(
        &cluster,
        0,
        &[
            "topic",
            "alter",
            "t",
            "--ingest",
            "trap:needle=boom",
            "--on-failure",
            "dead-letter",
        ],
    );
    let lines = |tag: &str| -> Vec<String> {
        ["ok-a", "boom-b", "ok-c", "boom-d"]
            .iter()
            .map(|v| format!("{v}-{tag}"))
            .collect()
    };
    let acks = cluster.produce_acks("t", &[], &lines("1"));
    let statuses: Vec<&str> = acks.iter().map(|v| v["status"].as_str().unwrap()).collect();
    assert_eq!(
        statuses,
        ["stored", "dead-lettered", "stored", "dead-lettered"],
        "{acks:?}"
    );
    assert_eq!(acks[1]["dead_letter_topic"], "t.dlq");
    assert_eq!(acks[1]["dead_letter_offset"], 0);
    assert_eq!(acks[3]["dead_letter_offset"], 1);

    let dlq_leader = |i: usize| -> Option<usize> {
        let out = cluster.run(i, &["topic", "describe", "t.dlq", "--output", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let p = v["replication"].get(0)?;
        let whole = p["replicas"].as_array()?.len() == 3 && p["isr"].as_array()?.len() == 3;
        whole.then(|| p["leader"].as_u64().map(|l| l as usize - 1))?
    };
    eventually("t.dlq on three in-sync replicas", || {
        dlq_leader(0).is_some()
    });
    let letters = |tag: &str| -> Vec<String> {
        ["boom-b", "boom-d"]
            .iter()
            .map(|v| format!("{v}-{tag}"))
            .collect()
    };
    for i in 0..3 {
        eventually(&format!("node {} serving the dead letters", i + 1), || {
            cluster.consume_from(i, "t.dlq") == Some(letters("1"))
        });
    }

    let leader = dlq_leader(0).unwrap();
    cluster.kill(leader);
    let other = (leader + 1) % 3;
    eventually("dead letters stored on the new leader of t.dlq", || {
        let acks = cluster.produce_acks("t", &[], &lines("2"));
        acks.iter()
            .filter(|v| v["status"] == "dead-lettered")
            .count()
            == 2
    });
    // A produce retried after its dead letters were stored stores them
    // again (at least once); none is lost.
    eventually("every dead letter on a surviving node", || {
        cluster.consume_from(other, "t.dlq").is_some_and(|got| {
            got.starts_with(&letters("1")) && letters("2").iter().all(|l| got.contains(l))
        })
    });
}

/// `topic delete` goes through the control log: the topic is gone from
/// every node at once, a node that was down deletes its copy when it is
/// back, and the name is refused for a new topic until it has (so the new
/// topic can never meet an old copy's records).
#[test]
fn a_deleted_topic_goes_from_every_node_and_its_name_waits_for_the_last_copy() {
    let mut cluster = Cluster::start();
    cluster.wait_until_up();
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(cluster.run(0, &["topic", "create", "t", "--partitions", "1"]));
    let values: Vec<String> = (0..10).map(|n| format!("old-{n}")).collect();
    assert_eq!(cluster.produce(&values), values);
    cluster.wait_for_full_isr();

    // Settings change through the control log, on every node.
    ok(cluster.run(0, &["topic", "alter", "t", "--retention-bytes", "1000000"]));
    for i in 0..3 {
        let deadline = Instant::now() + LIMIT;
        loop {
            let out = cluster.run(i, &["topic", "describe", "t", "--output", "json"]);
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if v["retention_bytes"] == 1_000_000 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} never took the new retention: {v}",
                i + 1
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    cluster.kill(2);
    ok(cluster.run(0, &["topic", "delete", "t"]));
    for i in 0..2 {
        let deadline = Instant::now() + LIMIT;
        while cluster.run(i, &["topic", "describe", "t"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "node {} still has the deleted topic",
                i + 1
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
    let early = cluster.run(1, &["topic", "create", "t", "--partitions", "1"]);
    assert!(
        !early.status.success()
            && String::from_utf8_lossy(&early.stderr).contains("is being deleted"),
        "the name waits for node 3's copy: {}",
        String::from_utf8_lossy(&early.stderr)
    );

    cluster.spawn(2);
    let deadline = Instant::now() + LIMIT;
    loop {
        let out = cluster.run(1, &["topic", "create", "t", "--partitions", "1"]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the name never came free: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        thread::sleep(Duration::from_millis(200));
    }
    ok(cluster.run(
        1,
        &[
            "topic",
            "create",
            "u",
            "--partitions",
            "1",
            "--unclean-leader-election",
        ],
    ));
    let fresh = vec!["new-0".to_owned()];
    assert_eq!(cluster.produce(&fresh), fresh);
    cluster.wait_for_full_isr();
    // A follower learns the high watermark with its next fetch.
    for i in 0..3 {
        let deadline = Instant::now() + LIMIT;
        loop {
            let served = cluster.consume(i);
            if served.as_ref() == Some(&fresh) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} serves {served:?}, not only the new topic's record",
                i + 1
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Committed group offsets live in the control log: a group that
/// committed through one node resumes where it stopped through the others
/// after that node is SIGKILLed, and `group describe` on any node shows the
/// offsets.
#[test]
fn group_offsets_committed_through_a_killed_node_resume_on_the_others() {
    let mut cluster = Cluster::start();
    cluster.wait_until_up();
    cluster.create_topic("t", 1);
    let values: Vec<String> = (0..10).map(|n| format!("v{n}")).collect();
    assert_eq!(cluster.produce(&values), values);
    cluster.wait_for_full_isr();

    let read = |out: std::process::Output| -> Vec<String> {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| v["value"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let first = read(cluster.run(
        0,
        &[
            "consume", "t", "--group", "g", "--max", "4", "--output", "json",
        ],
    ));
    assert_eq!(first, values[..4]);

    cluster.kill(0);
    let described = cluster.run(1, &["group", "describe", "g", "--output", "json"]);
    let described: Value = serde_json::from_slice(&described.stdout).unwrap_or_default();
    assert!(
        has_committed(&described, 4),
        "node 2 shows the offset committed through node 1: {described}"
    );
    // A follower serves up to the high watermark it has learned, which
    // its next fetch brings.
    let deadline = Instant::now() + LIMIT;
    while (1..3).any(|i| cluster.consume(i).as_ref() != Some(&values)) {
        assert!(Instant::now() < deadline, "the followers never served all");
        thread::sleep(Duration::from_millis(200));
    }
    let nodes: String = cluster.nodes[1..]
        .iter()
        .map(|n| n.addr.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let rest = read(
        Command::new(BIN)
            .args(["consume", "t", "--group", "g", "--output", "json"])
            .args(["--broker", &nodes, "--connect-timeout", "2s"])
            .arg("--ca")
            .arg(cluster.ca())
            .output()
            .unwrap(),
    );
    assert_eq!(
        rest,
        values[4..],
        "the group resumes after what it committed"
    );
}

/// Whether any object in `v` has `"committed": offset`.
fn has_committed(v: &Value, offset: u64) -> bool {
    match v {
        Value::Object(m) => {
            m.get("committed").and_then(Value::as_u64) == Some(offset)
                || m.values().any(|v| has_committed(v, offset))
        }
        Value::Array(a) => a.iter().any(|v| has_committed(v, offset)),
        _ => false,
    }
}

/// Config for the plugin tests: a debug build running three nodes per
/// test, and several tests at once, on two cores can take longer than the
/// default 50 ms plugin deadline to initialise a plugin.
const PLUGIN_DEADLINE: &str = "[plugins]\ndeadline_ms = 2000\n";

/// Runs a client command against node `i` and expects it to succeed.
fn ok(cluster: &Cluster, i: usize, args: &[&str]) -> std::process::Output {
    let out = cluster.run(i, args);
    assert!(
        out.status.success(),
        "{args:?} through node {}: {}",
        i + 1,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Polls `check` until it holds; panics with `what` after [`LIMIT`].
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {LIMIT:?}");
        thread::sleep(Duration::from_millis(200));
    }
}

/// `plugin list --output json` through node `i`: `(name, version, users)`.
fn plugins(cluster: &Cluster, i: usize) -> Vec<(String, u64, Vec<String>)> {
    let out = cluster.run(i, &["plugin", "list", "--output", "json"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| {
            let users = v["used_by"]
                .as_array()
                .map(|u| u.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default();
            (
                v["name"].as_str().unwrap().to_owned(),
                v["version"].as_u64().unwrap(),
                users,
            )
        })
        .collect()
}

/// The plugin registry and ingest chains live in the control log: a
/// plugin and a chain added through the partition's leader keep filtering
/// on the new leader after that node is SIGKILLed, the survivors list the
/// plugin, and the node, restarted after missing a plugin added while it
/// was down, gets that plugin's component (it builds a chain of it).
#[test]
fn plugins_and_ingest_chains_survive_a_killed_node_and_reach_a_restarted_one() {
    let mut cluster = Cluster::start_with(PLUGIN_DEADLINE);
    cluster.wait_for(0, "a controller and three nodes up", |s| {
        controller(s).is_some() && up(s) == [1, 2, 3]
    });
    ok(&cluster, 0, &["topic", "create", "t", "--partitions", "1"]);
    let first = cluster.leader();
    ok(
        &cluster,
        first,
        &["plugin", "add", "--bundled", "json-filter"],
    );
    ok(
        &cluster,
        first,
        &[
            "topic",
            "alter",
            "t",
            "--ingest",
            "json-filter:field=celsius,op=>=,value=-40",
        ],
    );
    let reading = |c: i64| format!("{{\"celsius\":{c}}}");
    cluster.produce(&[reading(21), reading(-999)]);
    cluster.wait_for_full_isr();

    cluster.kill(first);
    let second = (0..3)
        .filter(|i| *i != first)
        .find(|i| {
            let mut led = None;
            eventually("a new leader", || {
                led = cluster.partition(*i).and_then(|p| p["leader"].as_u64());
                led.is_some_and(|l| l as usize - 1 != first)
            });
            led.is_some()
        })
        .unwrap();
    cluster.produce(&[reading(-500), reading(30)]);
    let kept = vec![reading(21), reading(30)];
    eventually("the chain filtering on the new leader", || {
        cluster.consume(second).as_ref() == Some(&kept)
    });
    for i in (0..3).filter(|i| *i != first) {
        assert_eq!(
            plugins(&cluster, i),
            [("json-filter".to_owned(), 1, vec!["topic:t".to_owned()])],
            "node {}",
            i + 1
        );
    }

    // Added while `first` is down; it gets the component when it is back.
    ok(&cluster, second, &["plugin", "add", "--bundled", "redact"]);
    cluster.spawn(first);
    eventually(
        "the restarted node building a chain of the plugin it missed",
        || {
            cluster
                .run(
                    first,
                    &["topic", "alter", "t", "--ingest", "redact:fields=owner"],
                )
                .status
                .success()
        },
    );
    for i in 0..3 {
        eventually(&format!("node {} attaching the new chain", i + 1), || {
            let out = cluster.run(i, &["topic", "describe", "t", "--output", "json"]);
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            v["ingest"]
                .as_str()
                .is_some_and(|c| c.starts_with("redact"))
        });
    }
    assert_eq!(plugins(&cluster, first).len(), 2);
    cluster.produce(&["{\"owner\":\"ada\",\"celsius\":1}".to_owned()]);
    eventually("the redact chain applied", || {
        cluster
            .consume(second)
            .and_then(|v| v.last().cloned())
            .is_some_and(|last| !last.contains("ada"))
    });
}

/// The leader of partition 0 of `topic` as node `i` sees it, if it answers.
fn leader_of(cluster: &Cluster, i: usize, topic: &str) -> Option<u64> {
    let out = cluster.run(i, &["topic", "describe", topic, "--output", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["replication"][0]["leader"].as_u64()
}

/// Pipelines live in the control log and run on the leader of their
/// destination: SIGKILLing that node moves the pipeline to the new leader.
/// No checkpoint is ever written here, so the new runner resumes from what
/// its own copy of the destination shows, after the last input whose
/// outputs it holds, and runs the inputs before it again for their plugin
/// state only: the output holds what one node would have written, once, in
/// order (a filter, then a downsampler whose count is plugin state). A
/// topic a pipeline uses is not deleted, whichever node is asked.
#[test]
fn a_pipeline_moves_with_its_destination_leader_and_writes_each_output_once() {
    pipeline_takeover("pipeline_checkpoint_ms = 3600000\n", false);
}

/// The same takeover once the control log holds a checkpoint of the
/// pipeline's plugin state with its positions: the new runner restores
/// that state and goes on from there.
#[test]
fn a_pipeline_takeover_restores_plugin_state_from_its_checkpoint() {
    pipeline_takeover("", true);
}

/// Runs a filter and a downsampler (every fourth record it is given) from
/// `in` to `out` on a cluster with `config`, SIGKILLs the runner once the
/// outputs of the first half of the inputs are replicated (and, with
/// `checkpointed`, checkpointed), writes the second half, and checks the
/// output.
fn pipeline_takeover(config: &str, checkpointed: bool) {
    let mut cluster = Cluster::start_with(&format!("{config}{PLUGIN_DEADLINE}"));
    cluster.wait_for(0, "a controller and three nodes up", |s| {
        controller(s).is_some() && up(s) == [1, 2, 3]
    });
    for topic in ["in", "out"] {
        ok(
            &cluster,
            0,
            &["topic", "create", topic, "--partitions", "1"],
        );
    }
    for plugin in ["json-filter", "downsample"] {
        ok(&cluster, 0, &["plugin", "add", "--bundled", plugin]);
    }
    ok(
        &cluster,
        0,
        &[
            "pipeline",
            "create",
            "p",
            "--from",
            "in",
            "--to",
            "out",
            "--plugin",
            "json-filter:field=n,op=>=,value=0",
            "--plugin",
            "downsample:every=4",
        ],
    );
    let inputs: Vec<String> = (0..40)
        .map(|i| format!("{{\"n\":{}}}", if i % 4 == 3 { -i } else { i }))
        .collect();
    let kept: Vec<String> = inputs
        .iter()
        .filter(|v| !v.contains('-'))
        .step_by(4)
        .cloned()
        .collect();
    let runner = (leader_of(&cluster, 0, "out").unwrap() - 1) as usize;
    let other = (runner + 1) % 3;
    let described = cluster.run(other, &["pipeline", "describe", "p", "--output", "json"]);
    let described = String::from_utf8_lossy(&described.stdout).into_owned();
    assert!(
        described.contains(&format!("runs on node {}", runner + 1)),
        "{described}"
    );
    let refused = cluster.run(other, &["topic", "delete", "in"]);
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("pipeline:p"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Four produce calls, so likely several steps; the last input of each
    // is filtered out.
    for quarter in inputs[..20].chunks(5) {
        assert_eq!(cluster.produce_to("in", quarter), quarter);
    }
    let first_half = kept.iter().filter(|v| inputs[..20].contains(v)).count();
    // 15 inputs pass the filter: the downsampler's count is not back at 0,
    // so a runner that lost it would keep other records.
    assert_eq!(
        inputs[..20].iter().filter(|v| !v.contains('-')).count() % 4,
        3
    );
    eventually("the first half's outputs on every in-sync replica", || {
        cluster
            .consume_from(other, "out")
            .is_some_and(|out| out.len() == first_half)
    });
    let checkpoint = || {
        let out = cluster.run(other, &["pipeline", "describe", "p", "--output", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["positions"][0]["next_offset"].as_u64()
    };
    if checkpointed {
        eventually("the first half checkpointed", || checkpoint() == Some(20));
    } else {
        assert_eq!(checkpoint(), None, "no checkpoint is written");
    }
    cluster.kill(runner);
    assert_eq!(cluster.produce_to("in", &inputs[20..]), inputs[20..]);
    let mut last = None;
    eventually("every kept input in the output after the takeover", || {
        last = cluster.consume_from(other, "out");
        last.as_ref().is_some_and(|out| out.len() >= kept.len())
    });
    // Give a runner that resumed too early time to write again.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(cluster.consume_from(other, "out").unwrap(), kept);
    assert_eq!(last.unwrap(), kept);
    let described = cluster.run(other, &["pipeline", "describe", "p", "--output", "json"]);
    let described = String::from_utf8_lossy(&described.stdout).into_owned();
    assert!(
        !described.contains(&format!("node {}", runner + 1)),
        "the pipeline left the killed node: {described}"
    );
}

/// Every position of `needle` in `hay`.
fn positions(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(at, _)| at)
        .collect()
}

/// Flips a bit in every stored copy of `marker` in stopped node `i`'s data
/// file (as rot would); returns the file.
fn rot(cluster: &Cluster, i: usize, marker: &[u8]) -> PathBuf {
    let file = cluster.nodes[i].data.join("edgebus.redb");
    let mut bytes = std::fs::read(&file).unwrap();
    let found = positions(&bytes, marker);
    assert!(!found.is_empty(), "records are stored verbatim");
    for at in found {
        bytes[at + 3] ^= 0x01;
    }
    std::fs::write(&file, &bytes).unwrap();
    file
}

/// A record rots in the leader's data file while it is stopped. Restarted,
/// the node's scrub finds the batch failing its CRC; the node reports it,
/// leaves the in-sync set, cuts its log back and copies it again from the
/// new leader, and rejoins. Then the two other nodes are killed, so the
/// rebuilt copy leads alone: it serves every record, intact.
#[test]
fn a_damaged_copy_is_rebuilt_from_the_leader_and_can_lead_whole_again() {
    let mut cluster = Cluster::start_with("scrub_interval_ms = 300\n");
    cluster.wait_until_up();
    cluster.create_topic("t", 1);
    let values: Vec<String> = (0..20)
        .map(|n| format!("record-{n:02}-{}", "payload".repeat(8)))
        .collect();
    assert_eq!(cluster.produce(&values), values);
    cluster.wait_for_full_isr();

    let damaged = cluster.leader();
    cluster.stop(damaged);
    let marker = values[7].as_bytes();
    let file = rot(&cluster, damaged, marker);

    cluster.spawn(damaged);
    let deadline = Instant::now() + LIMIT;
    loop {
        // The correct bytes can only come back from another node.
        let rebuilt = std::fs::read(&file).is_ok_and(|b| !positions(&b, marker).is_empty());
        let whole = cluster.partition((damaged + 1) % 3).is_some_and(|p| {
            p["isr"].as_array().is_some_and(|isr| isr.len() == 3)
                && p["log_ends"][(damaged + 1).to_string()] == 20
        });
        if rebuilt && whole {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {} was not rebuilt and back in sync within {LIMIT:?} (rebuilt {rebuilt})",
            damaged + 1
        );
        thread::sleep(Duration::from_millis(200));
    }

    for other in (0..3).filter(|i| *i != damaged) {
        cluster.kill(other);
    }
    let deadline = Instant::now() + LIMIT;
    loop {
        if cluster.consume(damaged).as_ref() == Some(&values) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rebuilt copy never served every record intact, alone"
        );
        thread::sleep(Duration::from_millis(300));
    }
}

/// The last in-sync replica's copy rots: a topic with two copies loses
/// one node, so its leader acknowledges `acks=all` writes alone
/// (`min.insync.replicas` 1), and a record both copies hold rots in the
/// leader's file while it is stopped. Restarted, the leader cannot lead a
/// damaged copy, and cutting it back would lose what it alone holds: it
/// mends the batch from the out-of-sync replica, leads again, and both
/// copies end up holding every record, intact.
#[test]
fn a_damaged_last_in_sync_replica_mends_from_another_replica_and_loses_nothing() {
    let mut cluster = Cluster::start_with("scrub_interval_ms = 300\n");
    cluster.wait_until_up();
    let out = cluster.run(
        0,
        &[
            "topic",
            "create",
            "t",
            "--replication-factor",
            "2",
            "--min-insync-replicas",
            "1",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let values: Vec<String> = (0..30)
        .map(|n| format!("record-{n:02}-{}", "payload".repeat(8)))
        .collect();
    assert_eq!(cluster.produce(&values[..20]), values[..20]);

    let leader = cluster.leader();
    let p = cluster.partition(leader).expect("described");
    let replicas: Vec<usize> = p["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap() as usize - 1)
        .collect();
    let other = *replicas.iter().find(|i| **i != leader).unwrap();
    let deadline = Instant::now() + LIMIT;
    while cluster
        .partition(leader)
        .is_none_or(|p| p["log_ends"][(other + 1).to_string()] != 20)
    {
        assert!(Instant::now() < deadline, "the second copy never caught up");
        thread::sleep(Duration::from_millis(100));
    }

    // The other copy's node dies; the leader goes on alone.
    cluster.kill(other);
    let alone = serde_json::json!([leader + 1]);
    let deadline = Instant::now() + LIMIT;
    while cluster.partition(leader).is_none_or(|p| p["isr"] != alone) {
        assert!(
            Instant::now() < deadline,
            "the in-sync set never shrank to the leader"
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(cluster.produce(&values[20..]), values[20..]);

    cluster.stop(leader);
    let marker = values[7].as_bytes();
    let file = rot(&cluster, leader, marker);

    cluster.spawn(other);
    cluster.spawn(leader);
    let deadline = Instant::now() + LIMIT;
    loop {
        // The correct bytes can only come back from the other copy.
        let mended = std::fs::read(&file).is_ok_and(|b| !positions(&b, marker).is_empty());
        let served = cluster.consume(leader).as_ref() == Some(&values);
        if mended && served {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the leader's copy was not mended and served whole within {LIMIT:?} (mended {mended})"
        );
        thread::sleep(Duration::from_millis(300));
    }

    // The other copy catches up from the mended leader and, once the
    // leader is gone, leads with every record.
    let deadline = Instant::now() + LIMIT;
    while cluster.partition(leader).is_none_or(|p| {
        p["isr"].as_array().is_none_or(|isr| isr.len() != 2)
            || p["log_ends"][(other + 1).to_string()] != 30
    }) {
        assert!(
            Instant::now() < deadline,
            "the other copy never caught up again"
        );
        thread::sleep(Duration::from_millis(200));
    }
    let out = cluster.run(leader, &["topic", "describe", "t", "--output", "json"]);
    let described: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(described["unclean_leader_election"], false);
    assert_eq!(
        described["replication"][0]["rebuilding"],
        serde_json::json!([])
    );
    cluster.kill(leader);
    let deadline = Instant::now() + LIMIT;
    while cluster.consume(other).as_ref() != Some(&values) {
        assert!(
            Instant::now() < deadline,
            "the other copy never served every record"
        );
        thread::sleep(Duration::from_millis(300));
    }
}

/// The leader's disk fills up under `acks=leader` produce, whose commits
/// followers may fetch before they are fsync'd. The node stops (exit 6)
/// rather than reopen its store at its last fsync and lead on at the same
/// epoch with batches the followers already hold at other offsets; the
/// other two elect a leader and take `acks=all` writes. Needs root for the
/// tmpfs, as `disk_full.rs` does.
#[test]
fn a_node_whose_store_fails_stops_and_the_others_carry_on() {
    if !common::is_root() {
        eprintln!("skipped: mounting a small tmpfs as a node's data dir needs root");
        return;
    }
    let fs = common::Tmpfs::mount("8m").expect("mount a tmpfs (as root)");
    let mut cluster = Cluster::prepare("");
    cluster.nodes[0].data = fs.path().join("node1");
    for i in 0..3 {
        cluster.spawn(i);
    }
    cluster.wait_until_up();
    cluster.create_topic("t", 1);
    assert_eq!(
        cluster.leader(),
        0,
        "the first topic's partition 0 is led by node 1"
    );

    // 12 MiB of 64 KiB lines into a node with 8 MiB.
    let line = "x".repeat(64 * 1024);
    let mut producer = Command::new(BIN)
        .args(["produce", "t", "--acks", "leader", "--timeout-s", "30"])
        .arg("--broker")
        .arg(cluster.brokers())
        .arg("--ca")
        .arg(cluster.ca())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = producer.stdin.take().unwrap();
    let writer = thread::spawn(move || {
        for _ in 0..192 {
            if std::io::Write::write_all(&mut stdin, format!("{line}\n").as_bytes()).is_err() {
                return;
            }
        }
    });
    let mut node1 = cluster.nodes[0].process.take().unwrap();
    let status = common::wait_with_deadline(&mut node1, LIMIT);
    assert_eq!(status.code(), Some(6), "node 1 stops when its store fails");
    writer.join().unwrap();
    common::wait_with_deadline(&mut producer, LIMIT);

    let values: Vec<String> = (0..5).map(|n| format!("after-{n}")).collect();
    assert_eq!(
        cluster.produce(&values),
        values,
        "the two other nodes take acks=all writes"
    );
}

/// Two members of one group, each given a different node: both reach the
/// group's coordinator, so they share one group (one partition each) and
/// every record is consumed once, not once per node.
#[test]
fn group_members_reaching_different_nodes_share_one_group() {
    let cluster = Cluster::start();
    cluster.wait_until_up();
    cluster.create_topic("t", 2);
    cluster.wait_for_full_isr();

    let member = |i: usize| {
        let mut child = Command::new(BIN)
            .args([
                "consume", "t", "--group", "split", "--follow", "--output", "json",
            ])
            .arg("--broker")
            .arg(&cluster.nodes[i].addr)
            .arg("--ca")
            .arg(cluster.ca())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v["value"].as_str().unwrap_or_default().to_owned());
                }
            }
        });
        (child, rx)
    };
    let (mut a, from_a) = member(0);
    let (mut b, from_b) = member(2);

    let deadline = Instant::now() + LIMIT;
    loop {
        let out = cluster.run(1, &["group", "describe", "split", "--output", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let owned: Vec<usize> = v["members"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|m| m["partitions"].as_array().map_or(0, Vec::len))
                    .collect()
            })
            .unwrap_or_default();
        if owned == [1, 1] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the two members never shared the group's two partitions: {v}"
        );
        thread::sleep(Duration::from_millis(200));
    }

    let values: Vec<String> = (0..20).map(|n| format!("once-{n}")).collect();
    assert_eq!(cluster.produce(&values), values);
    let mut consumed = Vec::new();
    let deadline = Instant::now() + LIMIT;
    while consumed.len() < values.len() && Instant::now() < deadline {
        consumed.extend(from_a.try_iter());
        consumed.extend(from_b.try_iter());
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_millis(500));
    consumed.extend(from_a.try_iter());
    consumed.extend(from_b.try_iter());
    for child in [&mut a, &mut b] {
        let _ = child.kill();
        let _ = child.wait();
    }
    consumed.sort();
    let mut expected = values.clone();
    expected.sort();
    assert_eq!(consumed, expected, "every record consumed exactly once");
}

/// A Kafka client in a cluster: idempotent `acks=all` produce to three
/// partitions led by three nodes, bootstrapped from node 1 only, then a
/// consumer group bootstrapped from node 2. Metadata names each
/// partition's leader and every node's Kafka listener, and
/// `FindCoordinator` the group's coordinator.
const CLUSTER_KAFKA: &str = r#"
import json, sys, time
from confluent_kafka import Consumer, Producer
produce_from, consume_from, topic, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
acked, errors = [], []
def done(err, msg):
    if err: errors.append(str(err))
    else: acked.append(msg.partition())
p = Producer({'bootstrap.servers': produce_from, 'enable.idempotence': True, 'acks': 'all'})
for i in range(n):
    p.produce(topic, key=b'k%d' % i, value=b'%d' % i, on_delivery=done)
left = p.flush(30)
c = Consumer({'bootstrap.servers': consume_from, 'group.id': 'kafka-group',
              'auto.offset.reset': 'earliest', 'enable.auto.commit': False})
c.subscribe([topic])
seen = []
deadline = time.time() + 40
while len(seen) < n and time.time() < deadline:
    m = c.poll(0.2)
    if m is not None and not m.error():
        seen.append(int(m.value()))
c.commit(asynchronous=False)
c.close()
print(json.dumps({'errors': errors, 'left': left, 'acked': len(acked),
                  'partitions': sorted(set(acked)), 'seen': sorted(seen)}))
"#;

#[test]
fn kafka_clients_follow_partition_leaders_and_group_coordinators() {
    let python = std::env::var("EDGEBUS_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let found = Command::new(&python)
        .args(["-c", "import confluent_kafka"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "this test runs confluent-kafka, which {python} cannot import; .ci/run installs it \
         (see bus/server/tests/kafka.rs for the command)"
    );
    let mut cluster = Cluster::prepare("");
    let kafka: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", common::free_tcp_port()))
        .collect();
    for (node, address) in cluster.nodes.iter_mut().zip(&kafka) {
        node.args = vec!["--kafka-listen".into(), address.clone()];
    }
    for i in 0..3 {
        cluster.spawn(i);
    }
    cluster.wait_until_up();
    cluster.create_topic("k", 3);
    let leaders: std::collections::BTreeSet<u64> = {
        let out = cluster.run(0, &["topic", "describe", "k", "--output", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["replication"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["leader"].as_u64())
            .collect()
    };
    assert_eq!(leaders.len(), 3, "each node leads a partition");
    // Every node's Kafka address travels with its heartbeats.
    thread::sleep(Duration::from_millis(SESSION_TIMEOUT_MS / 2));

    let out = Command::new(&python)
        .args(["-c", CLUSTER_KAFKA, &kafka[0], &kafka[1], "k", "60"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(v["errors"], serde_json::json!([]), "{v}");
    assert_eq!(v["left"], 0, "{v}");
    assert_eq!(v["acked"], 60, "{v}");
    assert_eq!(v["partitions"], serde_json::json!([0, 1, 2]), "{v}");
    let all: Vec<u64> = (0..60).collect();
    assert_eq!(v["seen"], serde_json::json!(all), "{v}");

    // CreateTopics through the door places the replicas asked for.
    let create = "import sys\n\
        from confluent_kafka.admin import AdminClient, NewTopic\n\
        a = AdminClient({'bootstrap.servers': sys.argv[1]})\n\
        a.create_topics([NewTopic('from-kafka', num_partitions=2, replication_factor=3)])['from-kafka'].result(20)\n";
    let out = Command::new(&python)
        .args(["-c", create, &kafka[2]])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cluster.run(0, &["topic", "describe", "from-kafka", "--output", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let replicas: Vec<usize> = v["replication"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| p["replicas"].as_array().map_or(0, Vec::len))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(replicas, [3, 3], "{v}");
}
