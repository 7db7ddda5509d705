//! A cluster of three `edgebus serve` processes on 127.0.0.1, started the
//! way the README says (`tls init`, then `serve --node-id --peer
//! --cluster-ca`), observed only through `edgebus cluster status`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{BIN, free_port};
use serde_json::Value;

/// Session timeout the nodes run with: short, so fencing shows quickly.
const SESSION_TIMEOUT_MS: u64 = 2_000;
/// Longest any state change below may take.
const LIMIT: Duration = Duration::from_secs(40);

struct Node {
    id: u64,
    addr: String,
    data: PathBuf,
    process: Option<Child>,
}

/// Three nodes, SIGKILLed (by PID, through `Child`) when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(BIN)
            .args(["tls", "init"])
            .arg(dir.path().join("ca"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(
            dir.path().join("edgebus.toml"),
            format!("[cluster]\nsession_timeout_ms = {SESSION_TIMEOUT_MS}\n"),
        )
        .unwrap();
        let nodes = (1..=3)
            .map(|id| Node {
                id,
                addr: format!("127.0.0.1:{}", free_port()),
                data: dir.path().join(format!("node{id}")),
                process: None,
            })
            .collect();
        let mut cluster = Cluster { dir, nodes };
        for i in 0..3 {
            cluster.spawn(i);
        }
        cluster
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
    let out = Command::new(BIN)
        .args(["tls", "init"])
        .arg(dir.path().join("ca"))
        .output()
        .unwrap();
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

    let out = Command::new(BIN)
        .args(["tls", "init"])
        .arg(dir.path().join("ca"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "an existing CA is never replaced"
    );
}
