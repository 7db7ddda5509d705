//! `edgebus serve --metrics-listen`: a real broker process, real CLI
//! clients, `/metrics` scraped over plain HTTP and parsed by the Python
//! `prometheus_client` parser, the reference parser of the text format.
//!
//! The parser comes from `$EDGEBUS_PYTHON`, else from `python3` when it
//! can import `prometheus_client`, else from a venv this test makes under
//! the target dir with the pinned `prometheus-client` from PyPI. If that
//! fails the test fails and says how to install it.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{BIN, cli, free_port, wait_with_deadline};

/// The broker process, killed when the test ends however it ends.
struct Broker {
    child: Child,
    addr: String,
    metrics: String,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    /// Starts a broker with metrics on a port the OS picks, read back from
    /// its `metrics:` line.
    fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let addr = format!("127.0.0.1:{}", free_port());
        let mut child = Command::new(BIN)
            .args(["serve", "--data"])
            .arg(&data)
            .args(["--listen", &addr, "--metrics-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning edgebus serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut metrics = None;
        // The banner is a few lines; the metrics line is among the first.
        for line in lines.by_ref().take(8) {
            let line = line.expect("utf-8");
            if let Some(rest) = line.strip_prefix("metrics: http://") {
                metrics = rest.split('/').next().map(str::to_owned);
                break;
            }
        }
        thread::spawn(move || for _ in lines {});
        let Some(metrics) = metrics else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve printed no `metrics: http://ADDR/metrics` line");
        };
        Broker {
            child,
            addr,
            metrics,
            ca: data.join("tls").join("ca.pem"),
            _dir: dir,
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = cli(args, &self.addr, &self.ca);
        assert!(
            out.status.success(),
            "{args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn produce(&self, topic: &str, values: &[String]) {
        let mut child = Command::new(BIN)
            .args(["produce", topic, "--broker", &self.addr, "--ca"])
            .arg(&self.ca)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        for v in values {
            writeln!(stdin, "{v}").unwrap();
        }
        drop(stdin);
        let status = wait_with_deadline(&mut child, Duration::from_secs(30));
        assert!(status.success(), "produce to {topic}: {status}");
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.metrics, path)
    }
}

/// Every CLI command closes its QUIC connection before it exits. Before,
/// only `consume` did: the others' connections stayed open on the broker
/// until the idle timeout (10 s), each holding one of `max_connections`,
/// so a script running commands in a loop could fill them.
#[test]
fn cli_commands_close_their_connections_before_exiting() {
    let b = Broker::start();
    b.ok(&["topic", "create", "c", "--partitions", "2"]);
    b.produce("c", &["v".to_owned()]);
    for _ in 0..5 {
        b.ok(&["topic", "list"]);
        b.ok(&["topic", "describe", "c"]);
        b.ok(&["group", "list"]);
        b.ok(&["consume", "c"]);
    }
    let open = |b: &Broker| {
        let (status, text) = b.get("/metrics");
        assert_eq!(status, 200, "{text}");
        let s = parse(&text);
        (
            sample(&s, "edgebus_connections_open{}"),
            sample(&s, "edgebus_connections_accepted_total{}"),
        )
    };
    // The broker hears each close within a round trip; a loaded box gets
    // 3 s, still well inside the idle timeout.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut seen = open(&b);
    while seen.0 != 0.0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        seen = open(&b);
    }
    let (still_open, accepted) = seen;
    assert!(accepted >= 22.0, "{accepted} connections accepted");
    assert_eq!(
        still_open, 0.0,
        "of {accepted} connections, {still_open} still open"
    );
}

/// `GET path` over HTTP/1.1: the status code and the body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("metrics endpoint reachable");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {response:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    if path == "/metrics" {
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "content type of the text format expected: {head}"
        );
    }
    (status, body.to_owned())
}

/// The pinned parser, installed into a venv under the target dir when
/// neither `$EDGEBUS_PYTHON` nor `python3` has it, so the README's one test
/// command needs no setup beyond Python itself (PyPI is reachable).
const PARSER: &str = "prometheus-client==0.26.0";

/// The Python that has `prometheus_client`, or a failure saying how to get
/// one.
fn python() -> String {
    if let Some(python) = std::env::var_os("EDGEBUS_PYTHON") {
        return python.into_string().expect("EDGEBUS_PYTHON is UTF-8");
    }
    let can_import = |python: &str| {
        Command::new(python)
            .args(["-c", "import prometheus_client"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if can_import("python3") {
        return "python3".to_owned();
    }
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("prometheus-venv");
    let venv_python = venv.join("bin").join("python");
    let venv_python = venv_python.to_str().expect("UTF-8 path").to_owned();
    if !can_import(&venv_python) {
        let ran = |cmd: &mut Command| cmd.status().is_ok_and(|s| s.success());
        let installed = ran(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            && ran(Command::new(&venv_python).args(["-m", "pip", "install", "-q", PARSER]));
        assert!(
            installed && can_import(&venv_python),
            "this test parses /metrics with the Python prometheus_client parser, and could \
             not install it into {}. Install it, e.g.\n  python3 -m venv target/ci-venv && \
             target/ci-venv/bin/pip install {PARSER}\nthen run with \
             EDGEBUS_PYTHON=target/ci-venv/bin/python",
            venv.display()
        );
    }
    venv_python
}

/// Parses the exposition with `prometheus_client.parser`, which fails on
/// anything not in the text format; returns each sample as
/// `name{k="v",…}` (labels sorted) → value.
fn parse(text: &str) -> HashMap<String, f64> {
    const SCRIPT: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    if not family.name.startswith("edgebus_"):
        sys.exit("metric outside the edgebus_ prefix: " + family.name)
    for s in family.samples:
        labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
        print("%s {%s} %r" % (s.name, labels, s.value))
"#;
    let mut child = Command::new(python())
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the Python parser");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics: {}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (sample, value) = l.rsplit_once(' ').unwrap();
            (sample.replace(' ', ""), value.parse().unwrap())
        })
        .collect()
}

fn sample(samples: &HashMap<String, f64>, key: &str) -> f64 {
    *samples
        .get(key)
        .unwrap_or_else(|| panic!("no sample {key}; have: {:#?}", sorted(samples)))
}

fn sorted(samples: &HashMap<String, f64>) -> Vec<(&String, &f64)> {
    let mut v: Vec<_> = samples.iter().collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v
}

#[test]
fn metrics_endpoint_serves_parseable_values_and_health() {
    let b = Broker::start();
    assert_eq!(b.get("/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(b.get("/nope").0, 404);

    b.ok(&["topic", "create", "m", "--partitions", "1"]);
    let values: Vec<String> = (0..10).map(|i| format!("value-{i}")).collect();
    b.produce("m", &values);
    let consumed = b.ok(&["consume", "m", "--group", "g", "--max", "4"]);
    assert_eq!(consumed.lines().count(), 4);
    let all = b.ok(&["consume", "m"]);
    assert_eq!(all.lines().count(), 10);

    let (status, text) = b.get("/metrics");
    assert_eq!(status, 200, "{text}");
    let s = parse(&text);
    let p = r#"partition="0",topic="m""#;
    assert_eq!(
        sample(&s, &format!("edgebus_partition_records_in_total{{{p}}}")),
        10.0
    );
    assert!(sample(&s, &format!("edgebus_partition_bytes_in_total{{{p}}}")) > 10.0 * 7.0);
    // Fetches return whole batches: at least every record once.
    assert!(sample(&s, &format!("edgebus_partition_records_out_total{{{p}}}")) >= 10.0);
    assert_eq!(
        sample(&s, &format!("edgebus_partition_log_start{{{p}}}")),
        0.0
    );
    assert_eq!(
        sample(&s, &format!("edgebus_partition_log_end{{{p}}}")),
        10.0
    );
    assert_eq!(
        sample(&s, &format!("edgebus_partition_high_watermark{{{p}}}")),
        10.0
    );
    assert_eq!(
        sample(&s, &format!(r#"edgebus_group_lag{{group="g",{p}}}"#)),
        6.0
    );
    assert!(sample(&s, "edgebus_writer_commit_batches_count{}") >= 1.0);
    assert!(sample(&s, r#"edgebus_writer_commit_batches_bucket{le="+Inf"}"#) >= 1.0);
    assert!(sample(&s, r#"edgebus_writer_commit_seconds_count{durable="true"}"#) >= 1.0);
    // Four CLI commands above, one connection or more each; those closed
    // may not all be heard of yet.
    let accepted = sample(&s, "edgebus_connections_accepted_total{}");
    assert!(accepted >= 4.0, "{accepted} connections accepted");
    assert!(sample(&s, "edgebus_connections_open{}") <= accepted);
    assert_eq!(
        sample(&s, r#"edgebus_refusals_total{limit="max_connections"}"#),
        0.0
    );
    for family in [
        "edgebus_plugin_records_in",
        "edgebus_plugin_failures",
        "edgebus_plugin_budget_breaches",
        "edgebus_plugin_failing_cpu_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family}_total counter")),
            "{family} missing:\n{text}"
        );
    }
}

/// Refusals are counted by limit, and the open-connections gauge follows
/// connections; in process, so one client can hold the only connection
/// while another is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_open_connections_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = edgebus::config::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    config.limits.max_connections = 1;
    config.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    let broker = edgebus::start(config.clone()).await.unwrap();
    let metrics = broker.metrics_addr.unwrap().to_string();
    let client_config = || edgebus_client::ClientConfig::new(broker.addr, config.local_ca_path());
    let first = edgebus_client::Client::connect(client_config())
        .await
        .unwrap();
    edgebus_client::Client::connect(client_config())
        .await
        .expect_err("max_connections is 1");
    let scrape = {
        let metrics = metrics.clone();
        move || {
            let (status, text) = http_get(&metrics, "/metrics");
            assert_eq!(status, 200, "{text}");
            parse(&text)
        }
    };
    // The client's handshake can finish before the broker's connection task
    // counts it: scrape until it has (bounded), then check every figure.
    let mut s = tokio::task::spawn_blocking(scrape.clone()).await.unwrap();
    for _ in 0..50 {
        if sample(&s, "edgebus_connections_accepted_total{}") >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        s = tokio::task::spawn_blocking(scrape.clone()).await.unwrap();
    }
    assert_eq!(
        sample(&s, r#"edgebus_refusals_total{limit="max_connections"}"#),
        1.0
    );
    assert_eq!(sample(&s, "edgebus_connections_open{}"), 1.0);
    assert_eq!(sample(&s, "edgebus_connections_accepted_total{}"), 1.0);
    assert_eq!(
        tokio::task::spawn_blocking(move || http_get(&metrics, "/healthz"))
            .await
            .unwrap(),
        (200, "ok\n".to_owned())
    );
    first.close().await;
    // The broker hears the close within a round trip; allow a loaded box
    // a few seconds.
    let mut open = 1.0;
    for _ in 0..100 {
        let s = tokio::task::spawn_blocking(scrape.clone()).await.unwrap();
        open = sample(&s, "edgebus_connections_open{}");
        if open == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open, 0.0, "connection still counted open after close");
    broker.shutdown().await;
}
