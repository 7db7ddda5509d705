//! `edgebus produce` as a user runs it: the real binary against a real
//! broker process.

mod common;

use assert_cmd::Command;
use common::{BIN, Broker};
use serde_json::Value;

impl Broker {
    fn edgebus(&self, args: &[&str]) -> Command {
        let mut cmd = Command::from_std(self.command(args));
        cmd.timeout(std::time::Duration::from_secs(60));
        cmd
    }

    fn create(&self, topic: &str, extra: &[&str]) {
        let mut args = vec!["topic", "create", topic];
        args.extend_from_slice(extra);
        self.edgebus(&args).assert().success();
    }

    fn consume(&self, topic: &str) -> Vec<Value> {
        let out = self
            .edgebus(&["consume", topic, "--output", "json"])
            .assert()
            .success();
        json_lines(&out.get_output().stdout)
    }
}

fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Regression (the issue's reproduction): with a filter on ingest, every
/// line's ack named `offset` 0..5 although three records were stored at
/// 0..2. Now each line says what became of it, with an offset only where
/// the record is in the topic.
#[test]
fn acks_through_an_ingest_filter_say_what_became_of_each_line() {
    let b = Broker::start();
    let plugins = edgebus::bundled::ensure_built().expect("bundled plugins build");
    let wasm = plugins.join("json_filter.wasm");
    b.edgebus(&["plugin", "add", "json-filter", wasm.to_str().unwrap()])
        .assert()
        .success();
    b.create(
        "f",
        &[
            "--ingest",
            "json-filter:field=t,op=>,value=30",
            "--partitions",
            "1",
        ],
    );
    let out = b
        .edgebus(&["produce", "f", "--output", "json"])
        .write_stdin("{\"t\":10}\n{\"t\":40}\n{\"t\":20}\n{\"t\":50}\n{\"t\":5}\n{\"t\":60}\n")
        .assert()
        .success();
    let acks: Vec<(u64, String, Option<u64>)> = json_lines(&out.get_output().stdout)
        .iter()
        .map(|v| {
            (
                v["line"].as_u64().unwrap(),
                v["status"].as_str().unwrap().to_owned(),
                v["offset"].as_u64(),
            )
        })
        .collect();
    let expect = |line, status: &str, offset| (line, status.to_owned(), offset);
    assert_eq!(
        acks,
        vec![
            expect(1, "filtered", None),
            expect(2, "stored", Some(0)),
            expect(3, "filtered", None),
            expect(4, "stored", Some(1)),
            expect(5, "filtered", None),
            expect(6, "stored", Some(2)),
        ]
    );
    let values: Vec<_> = b
        .consume("f")
        .iter()
        .map(|v| v["value"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(values, vec!["{\"t\":40}", "{\"t\":50}", "{\"t\":60}"]);

    // Regression: `consume --group` dropped its `--filter`.
    let out = b
        .edgebus(&[
            "consume",
            "f",
            "--group",
            "g",
            "--filter",
            "json-filter:field=t,op=>,value=45",
            "--max",
            "2",
            "--output",
            "json",
        ])
        .assert()
        .success();
    let values: Vec<_> = json_lines(&out.get_output().stdout)
        .iter()
        .map(|v| v["value"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(values, vec!["{\"t\":50}", "{\"t\":60}"]);
}

/// Regression: a non-UTF-8 byte failed the whole run with no line number,
/// and lines read before it were never sent. Lines are byte strings.
#[test]
fn lines_are_bytes_and_values_can_be_base64_or_hex() {
    let b = Broker::start();
    b.create("bytes", &["--partitions", "1"]);
    b.edgebus(&["produce", "bytes"])
        .write_stdin(&b"plain\n\xff\xfebinary\nlast"[..])
        .assert()
        .success();
    b.edgebus(&["produce", "bytes", "--value-format", "base64"])
        .write_stdin("aGVsbG8=\n")
        .assert()
        .success();
    b.edgebus(&["produce", "bytes", "--value-format", "hex"])
        .write_stdin("00ff\n")
        .assert()
        .success();
    let values: Vec<(String, String)> = b
        .consume("bytes")
        .iter()
        .map(|v| {
            (
                v["value"].as_str().unwrap().to_owned(),
                v["value_encoding"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let b64 = |s: &str| (s.to_owned(), "base64".to_owned());
    let utf8 = |s: &str| (s.to_owned(), "utf8".to_owned());
    assert_eq!(
        values,
        vec![
            utf8("plain"),
            b64("//5iaW5hcnk="),
            utf8("last"),
            utf8("hello"),
            b64("AP8="),
        ]
    );

    // A line that does not decode is reported with its number; the others
    // are stored, and the exit code says some were not.
    let out = b
        .edgebus(&["produce", "bytes", "--value-format", "hex"])
        .write_stdin("61\nzz\n62\n")
        .assert()
        .code(5);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("hex"),
        "{stderr}"
    );
    let tail: Vec<_> = b
        .consume("bytes")
        .iter()
        .skip(5)
        .map(|v| v["value"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(tail, vec!["a", "b"]);
}

/// Regression: `--key-separator '\t'` was taken literally (every line
/// silently became a value without a key) and `''` was accepted.
#[test]
fn key_separator_understands_tab_and_refuses_empty() {
    let b = Broker::start();
    b.create("keyed", &["--partitions", "1"]);
    b.edgebus(&["produce", "keyed", "--key-separator", "\\t"])
        .write_stdin("dev1\t21.5\n")
        .assert()
        .success();
    b.edgebus(&[
        "produce",
        "keyed",
        "--record-key",
        "dev2",
        "-H",
        "unit=C",
        "-H",
        "src=x",
    ])
    .write_stdin("19.0\n")
    .assert()
    .success();
    let records = b.consume("keyed");
    let got: Vec<_> = records
        .iter()
        .map(|v| (v["key"].clone(), v["value"].clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (Value::from("dev1"), Value::from("21.5")),
            (Value::from("dev2"), Value::from("19.0")),
        ]
    );
    let headers: Vec<_> = records[1]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            format!(
                "{}={}",
                h["key"].as_str().unwrap(),
                h["value"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(headers, vec!["unit=C", "src=x"]);

    b.edgebus(&["produce", "keyed", "--key-separator", ""])
        .write_stdin("x\n")
        .assert()
        .code(2);
}

/// Regression: producing to a missing topic printed one error per input
/// line. Now it is checked once, before reading stdin, and exits 4.
#[test]
fn a_missing_topic_is_one_error_and_exit_4() {
    let b = Broker::start();
    let lines = "x\n".repeat(5000);
    let out = b
        .edgebus(&["produce", "no-such-topic"])
        .write_stdin(lines)
        .assert()
        .code(4);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no-such-topic"), "{stderr}");

    b.create("two", &["--partitions", "2"]);
    b.edgebus(&["produce", "two", "--partition", "2"])
        .write_stdin("x\n")
        .assert()
        .code(4);
}

/// Exit 1 is "any other failure": here, a file that cannot be read, before
/// any broker is dialled.
#[test]
fn an_unreadable_file_is_exit_1() {
    Command::new(BIN)
        .args(["serve", "--config", "/nonexistent/edgebus.toml"])
        .timeout(std::time::Duration::from_secs(30))
        .assert()
        .code(1);
    let b = Broker::start();
    b.edgebus(&["plugin", "add", "p", "/nonexistent/p.wasm"])
        .assert()
        .code(1);
}

/// Each line's ack status (`stored`, `filtered`, …) of `edgebus produce`.
fn produce_statuses(b: &Broker, topic: &str, lines: &str) -> Vec<String> {
    let out = b
        .edgebus(&["produce", topic, "--key-separator", ":", "--output", "json"])
        .write_stdin(lines.to_owned())
        .assert()
        .success();
    json_lines(&out.get_output().stdout)
        .iter()
        .map(|v| v["status"].as_str().unwrap().to_owned())
        .collect()
}

/// Issue 12 item 4: ingest plugin state lived in broker memory, so a
/// restart (here a SIGKILL) forgot the dedupe window and let duplicates
/// in. It is now stored in the transaction that stores the batch, so the
/// batch's ack alone promises it: the broker is killed right after it.
#[test]
fn ingest_dedupe_window_survives_a_broker_kill_and_restart() {
    let mut b = Broker::start();
    b.edgebus(&["plugin", "add", "--bundled", "dedupe"])
        .assert()
        .success();
    b.create(
        "d",
        &["--ingest", "dedupe:window_ms=600000", "--partitions", "1"],
    );
    assert_eq!(
        produce_statuses(&b, "d", "a:1\nb:1\n"),
        ["stored", "stored"]
    );
    b.restart();
    assert_eq!(produce_statuses(&b, "d", "a:2\n"), ["filtered"]);
    b.restart();
    assert_eq!(
        produce_statuses(&b, "d", "a:3\nb:3\nc:3\n"),
        ["filtered", "filtered", "stored"],
        "the window outlived the restarts"
    );
    let values: Vec<String> = b
        .consume("d")
        .iter()
        .map(|v| v["value"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(values, ["1", "1", "3"]);
}

/// Issue 12 item 4, read path: a subscription that names its plugin state
/// (`consume --plugin-state`, or `--group`) goes on from the state the
/// last one of the name left, after a broker kill too; an unnamed one
/// starts empty, and a deleted topic's named state goes with it.
#[test]
fn named_read_path_state_survives_a_broker_kill_and_goes_with_its_topic() {
    let mut b = Broker::start();
    b.edgebus(&["plugin", "add", "--bundled", "dedupe"])
        .assert()
        .success();
    b.create("r", &["--partitions", "1"]);
    let consume = |b: &Broker, from: &str, state: Option<&str>| -> Vec<String> {
        let mut args = vec!["consume", "r", "--from", from, "--output", "json"];
        args.extend(["--filter", "dedupe:window_ms=600000"]);
        if let Some(name) = state {
            args.extend(["--plugin-state", name]);
        }
        let out = b.edgebus(&args).assert().success();
        json_lines(&out.get_output().stdout)
            .iter()
            .map(|v| v["value"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(produce_statuses(&b, "r", "a:1\nb:1\na:2\n"), ["stored"; 3]);
    assert_eq!(consume(&b, "earliest", Some("s")), ["1", "1"]);
    assert_eq!(produce_statuses(&b, "r", "b:3\nc:3\n"), ["stored"; 2]);
    b.restart();
    assert_eq!(
        consume(&b, "3", Some("s")),
        ["3"],
        "b was seen under the name before the kill"
    );
    assert_eq!(consume(&b, "3", None), ["3", "3"], "no name, no memory");
    assert_eq!(consume(&b, "3", Some("other")), ["3", "3"]);
    // Starting below where the state stopped (it has seen offsets 0..5),
    // the subscription starts without it: records are let through twice
    // rather than dropped unseen.
    assert_eq!(consume(&b, "0", Some("s")), ["1", "1", "3"]);

    b.edgebus(&["topic", "delete", "r"]).assert().success();
    b.create("r", &["--partitions", "1"]);
    assert_eq!(produce_statuses(&b, "r", "a:1\nb:1\n"), ["stored"; 2]);
    assert_eq!(
        consume(&b, "earliest", Some("s")),
        ["1", "1"],
        "a topic made anew starts without the deleted one's state"
    );
}

/// Issue 12 gap: a pipeline's state budget counted only what its chain
/// wrote since it was last built, so every restart granted a plugin a
/// fresh budget on top of the state already stored. Stored state counts
/// now.
#[test]
fn pipeline_state_budget_counts_state_stored_before_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("edgebus.toml");
    std::fs::write(&config, "[plugins]\nstate_max_bytes = 4096\n").unwrap();
    let mut b = Broker::start_with(&["--config", config.to_str().unwrap()]);
    let plugins = edgebus::bundled::ensure_built().expect("plugins build");
    let wasm = plugins.join("state_hog.wasm");
    b.edgebus(&["plugin", "add", "state-hog", wasm.to_str().unwrap()])
        .assert()
        .success();
    b.create("src", &["--partitions", "1"]);
    b.create("dst", &["--partitions", "1"]);
    b.edgebus(&[
        "pipeline",
        "create",
        "hog",
        "--from",
        "src",
        "--to",
        "dst",
        "--plugin",
        "state-hog:value_bytes=1000",
    ])
    .assert()
    .success();
    let describe = |b: &Broker, next: u64| -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let out = b
                .edgebus(&["pipeline", "describe", "hog", "--output", "json"])
                .assert()
                .success();
            let p = json_lines(&out.get_output().stdout).remove(0);
            if p["positions"][0]["next_offset"].as_u64() == Some(next) {
                return p;
            }
            assert!(std::time::Instant::now() < deadline, "pipeline stuck: {p}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    b.edgebus(&["produce", "src"])
        .write_stdin("r1\nr2\nr3\n")
        .assert()
        .success();
    let before = describe(&b, 3);
    assert_eq!(before["counters"]["budget_breaches"], 0, "{before}");
    b.restart();
    b.edgebus(&["produce", "src"])
        .write_stdin("r4\nr5\nr6\n")
        .assert()
        .success();
    let after = describe(&b, 6);
    let kept = b.consume("dst").len();
    // 3 × (key + 1000 bytes) were stored; one more fits in 4096, two do
    // not (all three fail when they share one call).
    assert!((3..=4).contains(&kept), "{kept} records kept: {after}");
    assert!(
        after["counters"]["budget_breaches"].as_u64() >= Some(2),
        "{after}"
    );
    let state_bytes = after["counters"]["state_bytes"].as_u64().unwrap();
    assert!(
        (3000..=4096).contains(&state_bytes),
        "the state counted includes what was stored: {state_bytes}"
    );
}
