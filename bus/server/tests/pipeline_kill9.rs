//! A pipeline is exactly-once across SIGKILLs of the broker: after the
//! broker process is killed several times mid-stream and restarted, the
//! destination holds exactly the records the plugin keeps from the source,
//! once each, in order — no duplicate, no gap — because outputs, plugin
//! state and source position commit in one transaction.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{BIN, cli, free_port, spawn_broker, wait_with_deadline};

const RECORDS: usize = 1500;
const EVERY: usize = 3;

fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn pipeline_kill9_mid_stream_yields_no_duplicates_and_no_gaps() {
    let plugins = edgebus::bundled::ensure_built().expect("bundled plugins build");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let addr = format!("127.0.0.1:{}", free_port());
    let ca = data.join("tls").join("ca.pem");
    let mut broker = spawn_broker(&data, &addr);

    let wasm = plugins.join("downsample.wasm");
    let wasm = wasm.to_str().unwrap();
    for args in [
        vec!["plugin", "add", "downsample", wasm],
        vec!["topic", "create", "raw"],
        vec!["topic", "create", "thin"],
        vec![
            "pipeline",
            "create",
            "thinning",
            "--from",
            "raw",
            "--to",
            "thin",
            "--plugin",
            "downsample:every=3",
        ],
    ] {
        let out = cli(&args, &addr, &ca);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let mut producer = Command::new(BIN)
        .args([
            "produce",
            "raw",
            "--timeout-s",
            "90",
            "--broker",
            &addr,
            "--ca",
        ])
        .arg(&ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = producer.stdin.take().unwrap();
    let writer = thread::spawn(move || {
        for i in 0..RECORDS {
            writeln!(stdin, "r{i}").unwrap();
            if i % 10 == 9 {
                stdin.flush().unwrap();
                thread::sleep(Duration::from_millis(10));
            }
        }
    });
    for _ in 0..3 {
        thread::sleep(Duration::from_millis(500));
        broker.kill().unwrap();
        broker.wait().unwrap();
        broker = spawn_broker(&data, &addr);
    }
    writer.join().unwrap();
    let status = wait_with_deadline(&mut producer, Duration::from_secs(120));
    assert!(status.success(), "producer failed");

    // Wait until the pipeline has consumed the whole source.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = json_lines(&cli(
            &["pipeline", "describe", "thinning", "--output", "json"],
            &addr,
            &ca,
        ));
        let next = p[0]["positions"][0]["next_offset"].as_u64().unwrap_or(0);
        if next >= RECORDS as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "pipeline stuck: {}", p[0]);
        thread::sleep(Duration::from_millis(100));
    }
    let raw: Vec<String> = json_lines(&cli(&["consume", "raw", "--output", "json"], &addr, &ca))
        .iter()
        .map(|v| v["value"].as_str().unwrap().to_owned())
        .collect();
    let thin: Vec<String> = json_lines(&cli(&["consume", "thin", "--output", "json"], &addr, &ca))
        .iter()
        .map(|v| v["value"].as_str().unwrap().to_owned())
        .collect();
    broker.kill().unwrap();
    broker.wait().unwrap();

    assert_eq!(
        raw.len(),
        RECORDS,
        "the idempotent producer stored each line once"
    );
    let expected: Vec<String> = raw.iter().step_by(EVERY).cloned().collect();
    assert_eq!(
        thin, expected,
        "exactly one output per kept input, in order"
    );
}
