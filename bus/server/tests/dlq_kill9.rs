//! Kill -9 with an ingest chain that dead-letters: a separate idempotent
//! `edgebus produce` process writes to a topic whose `trap-on` plugin fails
//! on some records under `--on-failure dead-letter`, while the broker
//! process is SIGKILLed and restarted several times. A batch's dead letters
//! commit in the batch's own transaction and a retry of a stored batch does
//! not run the chain again, so afterwards the topic holds every kept record
//! once and `<topic>.dlq` holds one dead letter per failed record: none
//! lost, none written twice.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{BIN, cli, free_port, spawn_broker, wait_with_deadline};

/// The writer stops at this many lines even if the kills are not done.
const RECORDS_MAX: usize = 20_000;
/// Lines the writer may be ahead of the acks.
const AHEAD_MAX: usize = 200;
/// Line `i` is poisoned (its value contains the plugin's needle) when
/// `i % POISON_EVERY == POISON_AT`.
const POISON_EVERY: usize = 7;
const POISON_AT: usize = 3;
/// Kills: at least `KILLS_MIN`, then more while the kill phase is shorter
/// than `KILL_PHASE`, up to `KILLS_MAX`. Each kill now costs about 10 s,
/// as clients wait out their idle timeout after a restart instead of taking
/// the broker's stateless reset (see `restart_reconnect.rs`); with that
/// fixed, about 300 ms, and the test kills more often in less time.
const KILLS_MIN: usize = 3;
const KILLS_MAX: usize = 10;
const KILL_PHASE: Duration = Duration::from_secs(5);
/// Seeds the delays before each kill, so a failure can be replayed.
const SEED: u64 = 0x00d1_e5ee_d0fd_1e77;
const KILL_DELAY_MIN_MS: u64 = 20;
const KILL_DELAY_SPAN_MS: u64 = 300;
/// Time the restarted broker gets to acknowledge something before the
/// next kill.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(20);

fn line(i: usize) -> String {
    if i % POISON_EVERY == POISON_AT {
        format!("boom-{i}")
    } else {
        format!("rec-{i}")
    }
}

/// SplitMix64: a few lines of seeded randomness without a dependency.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn succeeded(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    succeeded(out, "consume");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A consumed record's header value, if it has the header.
fn header<'a>(record: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    record["headers"]
        .as_array()?
        .iter()
        .find(|h| h["key"] == key)
        .and_then(|h| h["value"].as_str())
}

/// What is wrong with `got` as a copy of `expected` (whose values are
/// distinct), in a few lines rather than thousands.
fn differences(got: &[&str], expected: &[String]) -> String {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for v in got {
        *counts.entry(v).or_default() += 1;
    }
    let twice: Vec<&str> = got
        .iter()
        .copied()
        .filter(|v| counts[v] > 1)
        .take(20)
        .collect();
    let missing: Vec<&str> = expected
        .iter()
        .map(String::as_str)
        .filter(|v| !counts.contains_key(v))
        .take(20)
        .collect();
    let first_difference = got
        .iter()
        .zip(expected)
        .position(|(g, e)| g != e)
        .unwrap_or(got.len().min(expected.len()));
    format!(
        "{} stored, {} expected; first difference at {first_difference}; \
         more than once: {twice:?}; missing: {missing:?}",
        got.len(),
        expected.len()
    )
}

/// A child process killed (SIGKILL, by its PID) and reaped when dropped,
/// so a failing assertion leaves no broker or producer behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        // Already reaped children are not signalled again.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until more than `than` lines are acknowledged.
fn wait_for_acks(acked: &AtomicUsize, than: usize) {
    let deadline = Instant::now() + PROGRESS_TIMEOUT;
    while acked.load(Ordering::Relaxed) <= than {
        assert!(
            Instant::now() < deadline,
            "no ack past {than} within {PROGRESS_TIMEOUT:?} (seed {SEED:#x})"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn dlq_kill9_during_produce_writes_each_dead_letter_exactly_once() {
    let plugins = edgebus::bundled::ensure_built().expect("bundled plugins build");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let addr = format!("127.0.0.1:{}", free_port());
    let ca = data.join("tls").join("ca.pem");
    let mut broker = Reaped(spawn_broker(&data, &addr));

    let wasm = plugins.join("trap_on.wasm");
    for args in [
        vec!["plugin", "add", "trap", wasm.to_str().unwrap()],
        vec![
            "topic",
            "create",
            "events",
            "--ingest",
            "trap:needle=boom",
            "--on-failure",
            "dead-letter",
        ],
    ] {
        succeeded(&cli(&args, &addr, &ca), &format!("{args:?}"));
    }

    let mut producer = Reaped(
        Command::new(BIN)
            .args(["produce", "events", "--acks", "durable", "--output", "json"])
            .args(["--timeout-s", "60", "--broker", &addr, "--ca"])
            .arg(&ca)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning edgebus produce"),
    );
    // The writer keeps the stream going until every kill is done, so each
    // kill lands with batches in flight, but stays at most `AHEAD_MAX`
    // lines ahead of the acks, so a stalled producer does not pile up work.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let mut stdin = producer.0.stdin.take().unwrap();
    let writer = thread::spawn({
        let (stop, acked) = (stop.clone(), acked.clone());
        move || {
            let mut written = 0;
            while written < RECORDS_MAX && !stop.load(Ordering::Relaxed) {
                if written - acked.load(Ordering::Relaxed).min(written) >= AHEAD_MAX {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                }
                for i in written..written + 10 {
                    writeln!(stdin, "{}", line(i)).unwrap();
                }
                written += 10;
                stdin.flush().unwrap();
                thread::sleep(Duration::from_millis(2));
            }
            written
        }
    });
    let stdout = producer.0.stdout.take().unwrap();
    let acks = thread::spawn({
        let acked = acked.clone();
        move || {
            for l in BufReader::new(stdout).lines() {
                l.unwrap();
                acked.fetch_add(1, Ordering::Relaxed);
            }
        }
    });

    // Each kill waits for the producer to make progress through the
    // previous restart, then a seeded delay.
    let mut rng = SEED;
    let mut acked_at_kills = vec![0];
    let kill_phase = Instant::now();
    let mut kills = 0;
    while kills < KILLS_MIN || (kills < KILLS_MAX && kill_phase.elapsed() < KILL_PHASE) {
        kills += 1;
        wait_for_acks(&acked, *acked_at_kills.last().unwrap());
        let delay_ms = KILL_DELAY_MIN_MS + splitmix64(&mut rng) % KILL_DELAY_SPAN_MS;
        thread::sleep(Duration::from_millis(delay_ms));
        acked_at_kills.push(acked.load(Ordering::Relaxed));
        broker.0.kill().expect("SIGKILL the broker");
        broker.0.wait().unwrap();
        broker = Reaped(spawn_broker(&data, &addr));
    }
    stop.store(true, Ordering::Relaxed);
    let records = writer.join().unwrap();
    let status = wait_with_deadline(&mut producer.0, Duration::from_secs(60));
    acks.join().unwrap();
    let acked = acked.load(Ordering::Relaxed);
    let mut stderr = String::new();
    producer
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();

    let log = json_lines(&cli(&["consume", "events", "--output", "json"], &addr, &ca));
    let letters = json_lines(&cli(
        &["consume", "events.dlq", "--output", "json"],
        &addr,
        &ca,
    ));
    drop(broker);

    assert!(
        records < RECORDS_MAX,
        "the writer ran out of lines before the last kill: {acked_at_kills:?}"
    );
    assert!(status.success(), "producer failed ({status}): {stderr}");
    assert_eq!(
        acked, records,
        "every line was acknowledged (seed {SEED:#x}, acked at kills {acked_at_kills:?})"
    );

    let (poisoned, kept): (Vec<String>, Vec<String>) =
        (0..records).map(line).partition(|l| l.starts_with("boom"));
    for (name, stored, expected) in [("events", &log, &kept), ("events.dlq", &letters, &poisoned)] {
        let values: Vec<&str> = stored
            .iter()
            .map(|r| r["value"].as_str().unwrap())
            .collect();
        assert!(
            values == *expected,
            "{name}: each record once, in order (seed {SEED:#x}, acked at kills \
             {acked_at_kills:?}): {}",
            differences(&values, expected)
        );
        let offsets: Vec<u64> = stored
            .iter()
            .map(|r| r["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(
            offsets,
            (0..expected.len() as u64).collect::<Vec<_>>(),
            "{name}: dense offsets"
        );
    }
    for letter in &letters {
        assert_eq!(header(letter, "edgebus-source-topic"), Some("events"));
        assert_eq!(header(letter, "edgebus-plugin"), Some("trap"));
        assert_eq!(header(letter, "edgebus-plugin-version"), Some("1"));
        let error = header(letter, "edgebus-error").unwrap_or_default();
        assert!(error.starts_with("plugin trapped"), "{letter}");
    }
}
