//! A broker whose disk fills up: producers hear at once that the broker's
//! disk is full (a typed, retriable `StorageFull`), not a delivery timeout
//! 30 s later, and every record acknowledged before stays readable.
//!
//! The data dir is a small tmpfs mounted for the test, which needs root
//! (CI runs as root). Elsewhere the test says it was skipped and why.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{BIN, Tmpfs, cli, free_port, is_root, spawn_broker, wait_with_deadline};

struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_full_disk_is_reported_at_once_and_loses_nothing_acknowledged() {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs as the data dir needs root");
        return;
    }
    let fs = Tmpfs::mount("8m").expect("mount a tmpfs (as root)");
    let data: PathBuf = fs.path().join("data");
    let addr = format!("127.0.0.1:{}", free_port());
    let ca = data.join("tls").join("ca.pem");
    let broker = Broker(spawn_broker(&data, &addr));
    let out = cli(
        &["topic", "create", "fill", "--partitions", "1"],
        &addr,
        &ca,
    );
    assert!(out.status.success(), "{out:?}");

    // 64 KiB lines, 12 MiB in all: half again what the disk holds.
    let line = "x".repeat(64 * 1024);
    let mut producer = Command::new(BIN)
        .args(["produce", "fill", "--output", "json", "--timeout-s", "120"])
        .args(["--broker", &addr, "--ca"])
        .arg(&ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = producer.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        for _ in 0..192 {
            if writeln!(stdin, "{line}").is_err() {
                return;
            }
        }
    });
    let stdout = producer.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(&l.unwrap()).unwrap())
            .collect::<Vec<_>>()
    });
    writer.join().unwrap();
    // Well inside the 120 s delivery timeout: the answer comes at once.
    let status = wait_with_deadline(&mut producer, Duration::from_secs(90));
    let acks = reader.join().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut producer.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(
        status.code(),
        Some(5),
        "some records were refused: {stderr}"
    );

    let stored: Vec<u64> = acks
        .iter()
        .filter(|a| a["status"] == "stored")
        .map(|a| a["offset"].as_u64().unwrap())
        .collect();
    let refused: Vec<_> = acks.iter().filter(|a| a["status"] == "failed").collect();
    assert!(!stored.is_empty(), "some records fit");
    assert!(!refused.is_empty(), "some records did not fit");
    for r in &refused {
        assert_eq!(r["code"], 32, "typed StorageFull: {r}");
        assert_eq!(r["retriable"], true, "{r}");
        let error = r["error"].as_str().unwrap();
        assert!(error.contains("disk is full"), "{error}");
    }

    // Everything acknowledged is there, where its ack said, also after a
    // kill -9 on the full disk and a restart.
    drop(broker);
    let broker = Broker(spawn_broker(&data, &addr));
    let out = cli(&["consume", "fill", "--output", "json"], &addr, &ca);
    assert!(out.status.success(), "{out:?}");
    let offsets: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["offset"]
                .as_u64()
                .unwrap()
        })
        .collect();
    for offset in &stored {
        assert!(
            offsets.contains(offset),
            "acked offset {offset} is readable"
        );
    }
    drop(broker);
}
