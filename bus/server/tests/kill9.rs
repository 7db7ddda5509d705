//! Kill -9: a separate `edgebus produce` process writes with `acks=durable`
//! while the broker process is SIGKILLed and restarted several times. Every
//! acknowledged record must be in the log exactly once, in order, with its
//! value; no record may appear twice; and no stored record may be reported
//! as failed (a retry the broker recognises is a delivery). Set
//! `EDGEBUS_KILL9_KILLS` to run more kills than the CI default.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use common::{BIN, cli, free_port, spawn_broker, wait_with_deadline};

/// Records per kill: the writer paces them at about 1,000 a second, and a
/// kill comes every 600 ms, so every kill lands mid-stream.
const RECORDS_PER_KILL: u64 = 1000;
/// Kills per run unless `EDGEBUS_KILL9_KILLS` says otherwise.
const KILLS: usize = 3;

#[test]
fn kill9_during_durable_produce_loses_and_duplicates_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let addr = format!("127.0.0.1:{}", free_port());
    let ca = data.join("tls").join("ca.pem");
    let mut broker = spawn_broker(&data, &addr);
    let kills = std::env::var("EDGEBUS_KILL9_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(KILLS);
    let records = RECORDS_PER_KILL * kills as u64;

    let out = cli(
        &["topic", "create", "crash", "--partitions", "1"],
        &addr,
        &ca,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut producer = Command::new(BIN)
        .args(["produce", "crash", "--acks", "durable", "--output", "json"])
        .args(["--timeout-s", "90", "--broker", &addr, "--ca"])
        .arg(&ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning edgebus produce");
    let mut stdin = producer.stdin.take().unwrap();
    let writer = thread::spawn(move || {
        for i in 1..=records {
            writeln!(stdin, "rec-{i}").unwrap();
            if i % 10 == 0 {
                stdin.flush().unwrap();
                thread::sleep(Duration::from_millis(10));
            }
        }
    });
    let stdout = producer.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(&l.unwrap()).unwrap())
            .map(|v| {
                let status = v["status"].as_str().unwrap().to_owned();
                assert!(
                    status == "stored" || status == "duplicate",
                    "unexpected ack {v}"
                );
                (v["line"].as_u64().unwrap(), v["offset"].as_u64())
            })
            .collect::<Vec<_>>()
    });

    for _ in 0..kills {
        thread::sleep(Duration::from_millis(600));
        broker.kill().expect("SIGKILL the broker");
        broker.wait().unwrap();
        broker = spawn_broker(&data, &addr);
    }
    writer.join().unwrap();
    let status = wait_with_deadline(&mut producer, Duration::from_secs(120));
    let acked = reader.join().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut producer.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "producer failed ({status}): {stderr}");
    assert_eq!(acked.len() as u64, records, "every record was acknowledged");

    let out = cli(&["consume", "crash", "--output", "json"], &addr, &ca);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log: Vec<(u64, String)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            (
                v["offset"].as_u64().unwrap(),
                v["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    broker.kill().unwrap();
    broker.wait().unwrap();

    // Dense offsets, each value once, in production order.
    for (i, (offset, _)) in log.iter().enumerate() {
        assert_eq!(*offset, i as u64, "offsets are dense");
    }
    let lines: Vec<u64> = log
        .iter()
        .map(|(_, v)| v.strip_prefix("rec-").unwrap().parse().unwrap())
        .collect();
    assert!(
        lines.windows(2).all(|w| w[0] < w[1]),
        "records are in order with no duplicate"
    );
    // Every acknowledged record is where its ack said, with its value. A
    // retry older than the broker's dedup window is acked without an
    // offset; it must still be in the log.
    for (line, offset) in &acked {
        let Some(offset) = offset else {
            let value = format!("rec-{line}");
            assert!(
                log.iter().any(|(_, v)| *v == value),
                "acked line {line} is in the log"
            );
            continue;
        };
        assert_eq!(
            log.get(*offset as usize).map(|(_, v)| v.as_str()),
            Some(format!("rec-{line}").as_str()),
            "acked line {line} at offset {offset}"
        );
    }
}
