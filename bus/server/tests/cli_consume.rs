//! `edgebus consume` and the CLI's output and error plumbing, run as real
//! processes against one real broker process. The cases share the broker
//! (each on its own topic or group) and run one after another in a single
//! test, so the broker starts once and is always killed at the end.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{BIN, Broker, wait_with_deadline};
use serde_json::Value;

impl Broker {
    /// Creates `topic` and writes `values` to `partition` of it, keyed `k`.
    fn produce(&self, topic: &str, partition: u32, values: &[&str]) {
        let partition = partition.to_string();
        let mut child = self
            .command(&["produce", topic, "--key-separator", ":"])
            .args(["--partition", &partition])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        for v in values {
            writeln!(stdin, "k:{v}").unwrap();
        }
        drop(stdin);
        let status = wait_with_deadline(&mut child, Duration::from_secs(30));
        assert!(status.success(), "produce to {topic}/{partition}: {status}");
    }
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn consume_cli_cases_against_one_broker() {
    let broker = Broker::start();
    broker.ok(&["topic", "create", "t", "--partitions", "2"]);
    broker.produce("t", 0, &["a0", "a1", "a2", "a3", "a4"]);
    broker.produce("t", 1, &["b0", "b1", "b2"]);

    closed_stdout_ends_every_command_quietly_with_zero(&broker);
    max_zero_prints_nothing(&broker);
    errors_are_json_or_yaml_on_stderr_as_output_asks(&broker);
    from_minus_n_prints_the_last_n_of_each_partition(&broker);
    offset_past_a_log_end_is_refused_for_every_partition_alike(&broker);
    format_template_and_print_flags_shape_each_line(&broker);
    sigint_in_a_group_commits_leaves_and_exits_zero(&broker);
    help_shows_examples();
}

/// Bug: `edgebus consume … | head -1` panicked with "failed printing to
/// stdout: Broken pipe" and exit 101; so did every command whose stdout
/// closed early.
fn closed_stdout_ends_every_command_quietly_with_zero(broker: &Broker) {
    // Far more than a pipe buffer holds, so consume is still writing when
    // the reader goes away.
    let line = "x".repeat(1000);
    let values: Vec<&str> = (0..300).map(|_| line.as_str()).collect();
    broker.ok(&["topic", "create", "pipe", "--partitions", "1"]);
    broker.produce("pipe", 0, &values);
    let mut consume = broker
        .command(&["consume", "pipe"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(consume.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first.trim_end(), format!("k\t{line}"));
    let status = wait_with_deadline(&mut consume, Duration::from_secs(30));
    let mut err = String::new();
    consume
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        status.success() && err.is_empty(),
        "consume: {status}: {err}"
    );

    // A command that prints through `println!`, its stdout closed before
    // it writes anything.
    for args in [
        ["topic", "list", "--output", "json"],
        ["topic", "list", "--output", "text"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = broker
            .command(&args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{args:?}: {}: {}",
            out.status,
            stderr(&out)
        );
    }
}

/// Bug: `consume --max 0` printed one record.
fn max_zero_prints_nothing(broker: &Broker) {
    assert_eq!(broker.ok(&["consume", "t", "--max", "0"]), "");
    assert_eq!(
        broker.ok(&["consume", "t", "--max", "2"]).lines().count(),
        2
    );
}

fn errors_are_json_or_yaml_on_stderr_as_output_asks(broker: &Broker) {
    let out = broker.run(&["consume", "nope", "--output", "json"]);
    assert_eq!(out.status.code(), Some(4));
    let err: Value = serde_json::from_str(&stderr(&out)).unwrap();
    assert_eq!(err["code"], 4);
    assert!(err["error"].as_str().unwrap().contains("nope"), "{err}");

    let out = broker.run(&["topic", "describe", "nope", "--output", "yaml"]);
    assert_eq!(out.status.code(), Some(4));
    let err: Value = serde_yaml_ng::from_str(&stderr(&out)).unwrap();
    assert_eq!(err["code"], 4);

    // Usage errors too, whether clap or the command finds them.
    for args in [
        &["consume", "t", "--output", "json", "--from", "soon"][..],
        &["consume", "t", "--output", "json", "--print-keys"],
    ] {
        let out = broker.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err: Value = serde_json::from_str(&stderr(&out))
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", stderr(&out)));
        assert_eq!(err["code"], 2);
    }

    let out = broker.run(&["consume", "nope"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).starts_with("error: "), "{}", stderr(&out));
}

fn from_minus_n_prints_the_last_n_of_each_partition(broker: &Broker) {
    let offsets = |from: &str| {
        let mut seen: Vec<(u64, u64)> =
            json_lines(&broker.ok(&["consume", "t", "--from", from, "--output", "json"]))
                .iter()
                .map(|r| {
                    (
                        r["partition"].as_u64().unwrap(),
                        r["offset"].as_u64().unwrap(),
                    )
                })
                .collect();
        seen.sort_unstable();
        seen
    };
    assert_eq!(offsets("-2"), [(0, 3), (0, 4), (1, 1), (1, 2)]);
    assert_eq!(offsets("-4").len(), 4 + 3, "fewer than N: all of them");
    let yaml = broker.ok(&[
        "consume",
        "t",
        "--from=-1",
        "--partition",
        "1",
        "--output",
        "yaml",
    ]);
    let doc: Value = serde_yaml_ng::from_str(yaml.trim_start_matches("---\n")).unwrap();
    assert_eq!(
        (doc["offset"].as_u64(), doc["value"].as_str()),
        (Some(2), Some("b2"))
    );
}

/// Bug: `--from N` past one partition's log end printed nothing for it,
/// silently, unless `--partition` named it (then the broker refused it).
fn offset_past_a_log_end_is_refused_for_every_partition_alike(broker: &Broker) {
    for args in [
        &["consume", "t", "--from", "4"][..],
        &["consume", "t", "--from", "4", "--partition", "1"],
        &["consume", "t", "--from", "4", "--follow"],
    ] {
        let out = broker.run(args);
        assert_eq!(out.status.code(), Some(4), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(
            stderr(&out).contains("offset 4 is past the log end of partition 1 (3)"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert_eq!(
        broker.ok(&["consume", "t", "--from", "3", "--partition", "0"]),
        "k\ta3\nk\ta4\n"
    );
}

fn format_template_and_print_flags_shape_each_line(broker: &Broker) {
    let out = broker.ok(&[
        "consume",
        "t",
        "--partition",
        "1",
        "--from",
        "2",
        "--format",
        r"%t %p %o %k %v [%h] %T %%\t.\n",
    ]);
    let (head, time) = out
        .strip_suffix(" %\t.\n")
        .unwrap()
        .rsplit_once(' ')
        .unwrap();
    assert_eq!(head, "t 1 2 k b2 []");
    time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{time:?} is not RFC 3339: {e}"));

    let out = broker.ok(&[
        "consume",
        "t",
        "--partition",
        "0",
        "--from",
        "-1",
        "--print-offset",
        "--print-partition",
        "--print-keys",
        "--print-headers",
    ]);
    assert_eq!(out, "0\t4\tk\t\ta4\n");

    let out = broker.run(&["consume", "t", "--format", "%v %x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown directive %x"),
        "{}",
        stderr(&out)
    );
}

/// Bug: Ctrl-C on `consume --group G` killed the process without leaving
/// the group, so the member held its partitions until its session timed out
/// (10 s), and what it had printed since the last auto-commit was read again.
fn sigint_in_a_group_commits_leaves_and_exits_zero(broker: &Broker) {
    let mut consume = broker
        .command(&["consume", "t", "--group", "ctrl-c", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(consume.stdout.take().unwrap()).lines();
    for _ in 0..8 {
        lines.next().expect("a record").unwrap();
    }
    let described = broker.ok(&["group", "describe", "ctrl-c", "--output", "json"]);
    let members = |d: &Value| d["members"].as_array().unwrap().len();
    assert_eq!(members(&serde_json::from_str(&described).unwrap()), 1);

    let kill = Command::new("kill")
        .args(["-INT", &consume.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = wait_with_deadline(&mut consume, Duration::from_secs(5));
    let mut err = String::new();
    consume
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "consume after SIGINT: {status}: {err}");

    // Well inside the 10 s session timeout: the member left, and every
    // printed record is committed.
    let d: Value =
        serde_json::from_str(&broker.ok(&["group", "describe", "ctrl-c", "--output", "json"]))
            .unwrap();
    assert_eq!(members(&d), 0, "{d}");
    let mut committed: Vec<(u64, u64)> = d["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["partition"].as_u64().unwrap(),
                p["committed"].as_u64().unwrap(),
            )
        })
        .collect();
    committed.sort_unstable();
    assert_eq!(committed, [(0, 5), (1, 3)], "{d}");
}

fn help_shows_examples() {
    let out = Command::new(BIN)
        .args(["consume", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("Examples:\n  edgebus consume"), "{help}");
}
