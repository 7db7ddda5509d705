//! A client connected to a broker that is SIGKILLed and restarted on the
//! same data dir and port reconnects at once: the restarted broker answers
//! the old connection's packets with a stateless reset signed by the key it
//! keeps in its data dir, so the client need not wait out its idle timeout.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{BIN, cli, free_port, spawn_broker, wait_with_deadline};

/// The client's QUIC idle timeout is 10 s; a reset must beat it by far.
const RECONNECT_MAX: Duration = Duration::from_secs(3);

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

/// Regression: the broker persists its stateless-reset key
/// (`tls::stateless_reset_key`) but keeps quinn's default connection-ID
/// generator, whose key is random per process. The restarted broker then
/// drops the old connection's packets as carrying an invalid CID instead of
/// answering them with a stateless reset, and every client stalls for its
/// whole 10 s idle timeout after a crash.
#[test]
fn producer_after_broker_kill9_and_restart_reconnects_without_waiting_out_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let addr = format!("127.0.0.1:{}", free_port());
    let ca = data.join("tls").join("ca.pem");
    let mut broker = Reaped(spawn_broker(&data, &addr));
    let out = cli(&["topic", "create", "t"], &addr, &ca);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut producer = Reaped(
        Command::new(BIN)
            .args([
                "produce", "t", "--output", "json", "--broker", &addr, "--ca",
            ])
            .arg(&ca)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning edgebus produce"),
    );
    let mut stdin = producer.0.stdin.take().unwrap();
    let stdout = producer.0.stdout.take().unwrap();
    let (ack_tx, acks) = mpsc::channel();
    thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let v: serde_json::Value = serde_json::from_str(&l.unwrap()).unwrap();
            if ack_tx.send(v["offset"].as_u64()).is_err() {
                return;
            }
        }
    });
    let ack_limit = Duration::from_secs(30);

    writeln!(stdin, "before").unwrap();
    stdin.flush().unwrap();
    assert_eq!(acks.recv_timeout(ack_limit), Ok(Some(0)));

    broker.0.kill().expect("SIGKILL the broker");
    broker.0.wait().unwrap();
    broker = Reaped(spawn_broker(&data, &addr));

    let started = Instant::now();
    writeln!(stdin, "after").unwrap();
    stdin.flush().unwrap();
    assert_eq!(acks.recv_timeout(ack_limit), Ok(Some(1)));
    let reconnect = started.elapsed();
    drop(stdin);
    let status = wait_with_deadline(&mut producer.0, ack_limit);
    drop(broker);

    assert!(status.success(), "producer failed: {status}");
    assert!(
        reconnect < RECONNECT_MAX,
        "the first produce after the restart took {reconnect:?}"
    );
}
