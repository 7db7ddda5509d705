//! The admin commands (`topic`, `group`, `plugin`, `pipeline`) as a user
//! runs them: the real `edgebus` binary against a real broker process on
//! 127.0.0.1, checked through exit codes and `--output json`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::{BIN, Broker, wait_with_deadline};
use serde_json::Value;

/// How long one produce of a few records may take.
const PRODUCE_MAX: Duration = Duration::from_secs(60);
/// How long a group consumer may take to be assigned a partition and
/// print its record; generous, for a loaded CI box.
const GROUP_WAIT: Duration = Duration::from_secs(30);

/// A child process killed (SIGKILL, by its PID) and reaped when dropped,
/// so a failing assertion leaves no broker or consumer behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        // Already reaped children are not signalled again.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Broker {
    /// Runs a command with `--output json` that must succeed; returns each
    /// line parsed.
    fn json(&self, args: &[&str]) -> Vec<Value> {
        let mut args = args.to_vec();
        args.extend(["--output", "json"]);
        self.ok(&args)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{args:?}: {l:?}: {e}")))
            .collect()
    }

    /// Runs a command the broker must refuse (exit 4); returns stderr.
    fn refused(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(4),
            "{args:?} should be refused by the broker; stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stderr).expect("utf-8 stderr")
    }

    /// Produces one record per line to one partition, all acknowledged.
    fn produce(&self, topic: &str, partition: u32, lines: &[String]) {
        let partition = partition.to_string();
        let mut child = self
            .command(&["produce", topic, "--partition", &partition])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning produce");
        let mut stdin = child.stdin.take().expect("piped stdin");
        for line in lines {
            writeln!(stdin, "{line}").unwrap();
        }
        drop(stdin);
        let status = wait_with_deadline(&mut child, PRODUCE_MAX);
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .expect("piped stderr")
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(status.success(), "produce failed: {stderr}");
    }

    fn describe_topic(&self, topic: &str) -> Value {
        self.json(&["topic", "describe", topic]).remove(0)
    }
}

fn plugin(name: &str) -> String {
    let dir = edgebus::bundled::ensure_built().expect("bundled plugins build");
    let path: &Path = &dir.join(format!("{name}.wasm"));
    path.to_str().unwrap().to_owned()
}

fn records(n: usize, size: usize) -> Vec<String> {
    (0..n).map(|i| format!("{i:0size$}")).collect()
}

/// Regression: `pipeline create --from orders --to orders` was accepted
/// and copied its own output back into its input for ever. A loop through
/// other pipelines was accepted too.
#[test]
fn pipeline_create_feeding_its_own_input_is_refused_with_exit_4() {
    let b = Broker::start();
    b.ok(&["plugin", "add", "downsample", &plugin("downsample")]);
    for t in ["orders", "a", "b", "c"] {
        b.ok(&["topic", "create", t]);
    }
    let plug = "downsample:every=2";
    let err = b.refused(&[
        "pipeline", "create", "echo", "--from", "orders", "--to", "orders", "--plugin", plug,
    ]);
    assert!(err.contains("PipelineCycle"), "{err}");
    assert!(err.contains("echo: orders → orders"), "{err}");

    b.ok(&[
        "pipeline", "create", "ab", "--from", "a", "--to", "b", "--plugin", plug,
    ]);
    b.ok(&[
        "pipeline", "create", "bc", "--from", "b", "--to", "c", "--plugin", plug,
    ]);
    let err = b.refused(&[
        "pipeline", "create", "ca", "--from", "c", "--to", "a", "--plugin", plug,
    ]);
    assert!(
        err.contains("ca: c → a, ab: a → b, bc: b → c"),
        "the refusal names the loop: {err}"
    );
    // Fan-out without a loop is fine: a feeds c directly as well as via b.
    b.ok(&[
        "pipeline", "create", "ac", "--from", "a", "--to", "c", "--plugin", plug,
    ]);
    let names: Vec<Value> = b
        .json(&["pipeline", "list"])
        .iter()
        .map(|p| p["name"].clone())
        .collect();
    assert_eq!(names, ["ab", "ac", "bc"]);
}

/// Regression: `topic delete` of a pipeline's source or destination went
/// through, leaving the pipeline halted on a missing topic.
#[test]
fn topic_delete_of_a_pipeline_topic_is_refused_naming_the_pipeline() {
    let b = Broker::start();
    b.ok(&["plugin", "add", "downsample", &plugin("downsample")]);
    b.ok(&["topic", "create", "raw"]);
    b.ok(&["topic", "create", "thin"]);
    b.ok(&[
        "pipeline",
        "create",
        "thinning",
        "--from",
        "raw",
        "--to",
        "thin",
        "--plugin",
        "downsample:every=2",
    ]);
    for topic in ["raw", "thin"] {
        let err = b.refused(&["topic", "delete", topic]);
        assert!(err.contains("TopicInUse"), "{err}");
        assert!(err.contains("pipeline:thinning"), "{err}");
    }
    assert_eq!(b.json(&["topic", "list"]).len(), 2, "nothing was deleted");
    b.ok(&["pipeline", "delete", "thinning"]);
    b.ok(&["topic", "delete", "thin"]);
    b.ok(&["topic", "delete", "raw"]);
    assert_eq!(b.json(&["topic", "list"]), Vec::<Value>::new());
}

/// Regression: the failure policy was printed `DeadLetter` (text) and
/// `deadletter` (JSON), and the strategy `Sticky`; neither is what a flag
/// takes.
#[test]
fn admin_output_spells_policies_and_strategies_as_the_flags_do() {
    let b = Broker::start();
    b.ok(&["plugin", "add", "downsample", &plugin("downsample")]);
    b.ok(&[
        "topic",
        "create",
        "s",
        "--ingest",
        "downsample:every=1",
        "--on-failure",
        "dead-letter",
    ]);
    b.ok(&["topic", "create", "out"]);
    b.ok(&[
        "pipeline",
        "create",
        "p",
        "--from",
        "s",
        "--to",
        "out",
        "--plugin",
        "downsample:every=1",
        "--on-failure",
        "halt",
    ]);
    b.ok(&[
        "group",
        "reset-offsets",
        "g",
        "--topic",
        "s",
        "--to",
        "earliest",
    ]);

    assert_eq!(b.describe_topic("s")["on_failure"], "dead-letter");
    assert_eq!(
        b.json(&["pipeline", "describe", "p"])[0]["on_failure"],
        "halt"
    );
    assert_eq!(b.json(&["group", "describe", "g"])[0]["strategy"], "sticky");
    let text = [
        b.ok(&["topic", "describe", "s"]),
        b.ok(&["pipeline", "describe", "p"]),
        b.ok(&["pipeline", "list"]),
        b.ok(&["group", "describe", "g"]),
    ]
    .concat();
    for wrong in ["DeadLetter", "deadletter", "Halt", "Sticky"] {
        assert!(!text.contains(wrong), "{wrong:?} in:\n{text}");
    }
    for right in ["dead-letter", "halt", "sticky"] {
        assert!(text.contains(right), "{right:?} missing from:\n{text}");
    }
}

/// Regression: `pipeline create`, `pipeline delete`, `plugin remove` (and
/// `plugin add`'s YAML) ignored `--output`, printing prose to scripts.
#[test]
fn every_admin_command_honours_output_json_and_yaml() {
    let b = Broker::start();
    let wasm = plugin("downsample");
    let added = b.json(&["plugin", "add", "downsample", &wasm]);
    assert_eq!(added[0]["name"], "downsample");
    assert_eq!(added[0]["version"], 1);
    let yaml = b.ok(&["plugin", "add", "downsample", &wasm, "--output", "yaml"]);
    assert!(yaml.starts_with("---\n"), "{yaml}");
    assert!(yaml.contains("version: 2"), "{yaml}");
    assert_eq!(
        b.json(&["topic", "create", "a"]),
        [serde_json::json!({"created": "a"})]
    );
    assert_eq!(
        b.json(&["topic", "create", "b"]),
        [serde_json::json!({"created": "b"})]
    );
    assert_eq!(
        b.json(&[
            "pipeline",
            "create",
            "p",
            "--from",
            "a",
            "--to",
            "b",
            "--plugin",
            "downsample:every=2"
        ]),
        [serde_json::json!({"created": "p"})]
    );
    let described = b.json(&["plugin", "describe", "downsample"]);
    assert_eq!(described[0]["used_by"], serde_json::json!(["pipeline:p"]));
    assert_eq!(
        b.json(&["pipeline", "delete", "p"]),
        [serde_json::json!({"deleted": "p"})]
    );
    assert_eq!(
        b.json(&["plugin", "remove", "downsample"]),
        [serde_json::json!({"removed": "downsample"})]
    );
    assert_eq!(
        b.json(&["topic", "alter", "a", "--retention-ms", "60000"]),
        [serde_json::json!({"altered": "a", "config": {
            "name": "a", "partitions": 1, "retention_ms": 60000, "retention_bytes": -1,
            "max_message_bytes": 1048576, "compression": "none",
        }})]
    );
    let yaml = b.ok(&[
        "group",
        "reset-offsets",
        "g",
        "--topic",
        "a",
        "--to",
        "latest",
        "--output",
        "yaml",
    ]);
    assert!(
        yaml.contains("group: g") && yaml.contains("offset: 0"),
        "{yaml}"
    );
}

/// `topic alter` changes retention and the record size limit, and grows
/// the partition count; new partitions take records and serve them at
/// once, shrinking is refused, and everything holds after a restart.
#[test]
fn topic_alter_grows_partitions_usable_at_once_and_survives_restart() {
    let mut b = Broker::start();
    b.ok(&["topic", "create", "t"]);
    b.produce("t", 0, &records(3, 8));
    b.ok(&[
        "topic",
        "alter",
        "t",
        "--partitions",
        "3",
        "--retention-ms",
        "3600000",
        "--retention-bytes",
        "1048576",
        "--max-message-bytes",
        "2048",
    ]);
    b.produce("t", 2, &["late".to_owned()]);
    let read = b.json(&["consume", "t", "--partition", "2"]);
    assert_eq!(read.len(), 1);
    assert_eq!(read[0]["value"], "late");
    let big = b
        .command(&["produce", "t"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            writeln!(c.stdin.take().unwrap(), "{}", "x".repeat(3000))?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        !big.status.success() && String::from_utf8_lossy(&big.stderr).contains("RecordTooLarge"),
        "the new max.message.bytes applies: {}",
        String::from_utf8_lossy(&big.stderr)
    );
    let err = b.refused(&["topic", "alter", "t", "--partitions", "2"]);
    assert!(
        err.contains("InvalidTopicConfig") && err.contains("not removed"),
        "{err}"
    );

    b.restart();
    let d = b.describe_topic("t");
    assert_eq!(d["partitions"], 3);
    assert_eq!(d["retention_ms"], 3_600_000);
    assert_eq!(d["retention_bytes"], 1_048_576);
    assert_eq!(d["max_message_bytes"], 2048);
    let records: Vec<&Value> = d["partition_offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["records"])
        .collect();
    assert_eq!(records, [3, 0, 1]);
    b.produce("t", 1, &["after restart".to_owned()]);
    assert_eq!(
        b.json(&["consume", "t", "--partition", "1"])[0]["value"],
        "after restart"
    );
}

/// A consumer group rebalances onto partitions added while it runs, and
/// its offsets cannot be reset while it has a member.
#[test]
fn topic_alter_partitions_reaches_a_running_group_member() {
    let b = Broker::start();
    b.ok(&["topic", "create", "t"]);
    let mut consumer = Reaped(
        b.command(&[
            "consume", "t", "--group", "g", "--follow", "--output", "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning consume"),
    );
    let (tx, rx) = mpsc::channel();
    let stdout = consumer.0.stdout.take().expect("piped stdout");
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    b.produce("t", 0, &["first".to_owned()]);
    let first: Value =
        serde_json::from_str(&rx.recv_timeout(GROUP_WAIT).expect("first record")).expect("json");
    assert_eq!(first["value"], "first");

    b.ok(&["topic", "alter", "t", "--partitions", "2"]);
    b.produce("t", 1, &["second".to_owned()]);
    let second: Value = serde_json::from_str(
        &rx.recv_timeout(GROUP_WAIT)
            .expect("record of the new partition"),
    )
    .expect("json");
    assert_eq!(
        (second["partition"].clone(), second["value"].clone()),
        (1.into(), "second".into())
    );

    let err = b.refused(&[
        "group",
        "reset-offsets",
        "g",
        "--topic",
        "t",
        "--to",
        "earliest",
        "--dry-run",
    ]);
    assert!(err.contains("GroupNotEmpty"), "{err}");
}

/// `topic create --if-not-exists` succeeds on an existing topic and leaves
/// it as it was; without the flag it is refused.
#[test]
fn topic_create_if_not_exists_on_existing_topic_exits_0_and_changes_nothing() {
    let b = Broker::start();
    b.ok(&["topic", "create", "t", "--partitions", "2"]);
    let out = b.json(&[
        "topic",
        "create",
        "t",
        "--partitions",
        "5",
        "--if-not-exists",
    ]);
    assert_eq!(out, [serde_json::json!({"exists": "t"})]);
    assert_eq!(b.describe_topic("t")["partitions"], 2);
    let err = b.refused(&["topic", "create", "t"]);
    assert!(err.contains("TopicExists"), "{err}");
    b.ok(&["topic", "create", "u", "--if-not-exists"]);
    assert_eq!(b.describe_topic("u")["partitions"], 1);
    // Replication settings need a cluster; a single node says so.
    for flags in [
        &["--replication-factor", "3"][..],
        &["--min-insync-replicas", "2"][..],
        &["--unclean-leader-election"][..],
    ] {
        let mut args = vec!["topic", "create", "r"];
        args.extend_from_slice(flags);
        let err = b.refused(&args);
        assert!(err.contains("need a cluster"), "{flags:?}: {err}");
    }
}

/// `group reset-offsets`: a dry run plans and changes nothing, `--partition`
/// limits the reset, `shift:N` moves the committed offset and stays within
/// the log.
#[test]
fn group_reset_offsets_dry_run_partition_and_shift() {
    let b = Broker::start();
    b.ok(&["topic", "create", "t", "--partitions", "2"]);
    b.produce("t", 0, &records(10, 4));
    b.produce("t", 1, &records(4, 4));
    let reset = |extra: &[&str]| {
        let mut args = vec!["group", "reset-offsets", "g", "--topic", "t"];
        args.extend(extra);
        b.json(&args)
    };
    let committed = || {
        let d = b.json(&["group", "describe", "g"]).remove(0);
        d["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["committed"].clone())
            .collect::<Vec<_>>()
    };
    let planned = reset(&["--to", "latest", "--dry-run"]);
    assert_eq!(planned.len(), 2);
    assert_eq!(
        (planned[0]["offset"].clone(), planned[0]["dry_run"].clone()),
        (10.into(), true.into())
    );
    assert!(
        b.refused(&["group", "describe", "g"])
            .contains("UnknownGroup"),
        "a dry run commits nothing"
    );
    reset(&["--to", "latest"]);
    assert_eq!(committed(), [10, 4]);

    let plan = reset(&["--to", "shift:-3", "--partition", "0", "--dry-run"]);
    assert_eq!(plan.len(), 1);
    assert_eq!(
        (plan[0]["previous"].clone(), plan[0]["offset"].clone()),
        (10.into(), 7.into())
    );
    assert_eq!(committed(), [10, 4], "the dry run changed nothing");
    reset(&["--to", "shift:-3", "--partition", "0"]);
    assert_eq!(committed(), [7, 4], "only partition 0 moved");
    reset(&["--to", "shift:-100"]);
    assert_eq!(committed(), [0, 0], "a shift stops at the log start");
    reset(&["--to", "shift:100"]);
    assert_eq!(committed(), [10, 4], "a shift stops at the log end");
    reset(&["--to", "2", "--partition", "1"]);
    assert_eq!(committed(), [10, 2]);

    let text = b.ok(&[
        "group",
        "reset-offsets",
        "g",
        "--topic",
        "t",
        "--to",
        "earliest",
        "--dry-run",
    ]);
    assert!(
        text.starts_with(
            "TOPIC  PARTITION  COMMITTED  NEW-OFFSET\nt      0          10         0\n"
        ),
        "{text}"
    );
    assert!(text.contains("dry run"), "{text}");
    assert_eq!(committed(), [10, 2]);
    let err = b.refused(&[
        "group",
        "reset-offsets",
        "g",
        "--topic",
        "t",
        "--to",
        "earliest",
        "--partition",
        "2",
    ]);
    assert!(err.contains("UnknownPartition"), "{err}");
    let err = b.refused(&[
        "group",
        "reset-offsets",
        "fresh",
        "--topic",
        "t",
        "--to",
        "shift:1",
    ]);
    assert!(err.contains("no committed offset"), "{err}");
}

/// `topic describe` reports each partition's record count and size (raw
/// in JSON, readable in text), and `plugin list` its sizes, in aligned
/// tables.
#[test]
fn topic_describe_and_plugin_list_show_sizes_in_aligned_tables() {
    let b = Broker::start();
    b.ok(&["topic", "create", "t", "--partitions", "2"]);
    b.produce("t", 0, &records(40, 100));
    let d = b.describe_topic("t");
    let parts = d["partition_offsets"].as_array().unwrap();
    assert_eq!(parts[0]["records"], 40);
    assert_eq!(parts[1]["records"], 0);
    assert_eq!(parts[1]["size_bytes"], 0);
    let size = parts[0]["size_bytes"].as_u64().unwrap();
    assert!(size > 4000, "40 records of 100 bytes take {size} bytes");
    assert_eq!(d["size_bytes"], size);
    assert_eq!(d["records"], 40);

    let text = b.ok(&["topic", "describe", "t"]);
    let human = format!("{:.1} KiB", size as f64 / 1024.0);
    assert!(
        text.contains(&format!("size               {human}\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "PARTITION  LOG-START  LOG-END  RECORDS  SIZE\n\
             0          0          40       40       {human}\n\
             1          0          0        0        0 B\n"
        )),
        "{text}"
    );

    b.ok(&["plugin", "add", "downsample", &plugin("downsample")]);
    let list = b.ok(&["plugin", "list"]);
    let mut lines = list.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("NAME        VERSION  KIND    SIZE"),
        "{list}"
    );
    let row = lines.next().unwrap();
    assert!(row.starts_with("downsample  1        filter  "), "{list}");
    assert!(row.contains(" KiB  sha256:"), "{list}");
}

/// Each admin command's `--help` ends with examples to copy.
#[test]
fn every_admin_command_help_shows_examples() {
    let commands: &[&[&str]] = &[
        &["topic"],
        &["topic", "create"],
        &["topic", "alter"],
        &["topic", "list"],
        &["topic", "describe"],
        &["topic", "delete"],
        &["group"],
        &["group", "list"],
        &["group", "describe"],
        &["group", "reset-offsets"],
        &["group", "delete"],
        &["plugin"],
        &["plugin", "add"],
        &["plugin", "list"],
        &["plugin", "describe"],
        &["plugin", "remove"],
        &["pipeline"],
        &["pipeline", "create"],
        &["pipeline", "list"],
        &["pipeline", "describe"],
        &["pipeline", "delete"],
    ];
    for args in commands {
        let out = Command::new(BIN)
            .args(*args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?} --help");
        let help = String::from_utf8(out.stdout).unwrap();
        let prefix = format!("Examples:\n  edgebus {}", args[0]);
        assert!(
            help.contains(&prefix),
            "{args:?} --help has no examples:\n{help}"
        );
    }
}
