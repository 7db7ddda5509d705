//! The Kafka front door against a real `edgebus serve` process, with
//! clients no one here wrote: `kcat` (librdkafka), `confluent-kafka`
//! (librdkafka, bundled) and `kafka-python` (a pure-Python client), plus
//! raw frames for what no client sends on purpose.
//!
//! The clients must be installed: `kcat` from the Debian package of that
//! name, the Python ones in the Python `$EDGEBUS_PYTHON` names (else
//! `python3`). `.ci/run` installs both; a missing one fails the test with
//! the command that installs it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::{Broker, free_tcp_port};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use serde_json::Value;

/// The Python clients the tests run, pinned; `.ci/run` installs these.
const PYTHON_CLIENTS: &str = "confluent-kafka==2.16.1 kafka-python==3.0.12";

/// A broker with the Kafka door on a free loopback port, and the door's
/// address.
fn kafka_broker(config: &str) -> (Broker, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edgebus.toml");
    std::fs::write(&path, config).unwrap();
    let kafka = format!("127.0.0.1:{}", free_tcp_port());
    let metrics = format!("127.0.0.1:{}", free_tcp_port());
    let broker = Broker::start_with(&[
        "--kafka-listen",
        &kafka,
        "--metrics-listen",
        &metrics,
        "--config",
        path.to_str().unwrap(),
    ]);
    std::fs::write(dir.path().join("metrics"), &metrics).unwrap();
    (broker, kafka, dir)
}

/// The config of brokers in these tests: groups settle fast.
const FAST_GROUPS: &str = "[kafka]\ninitial_rebalance_delay_ms = 1000\n";

/// `kcat`, or a failure saying how to install it.
fn kcat() -> Command {
    let found = Command::new("kcat")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "these tests run kcat, which is not installed: apt-get install kcat (Debian/Ubuntu)"
    );
    Command::new("kcat")
}

/// Runs kcat to its end (at most 30 s); returns stdout.
fn kcat_ok(args: &[&str], stdin: &str) -> String {
    let mut child = kcat()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("kcat {args:?} did not finish in 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kcat {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A Python with both client libraries, or a failure saying how to get one.
fn python() -> String {
    let python = std::env::var("EDGEBUS_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let found = Command::new(&python)
        .args(["-c", "import confluent_kafka, kafka"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "these tests run the Python Kafka clients, which {python} cannot import. Install them:\n  \
         python3 -m venv target/ci-venv && target/ci-venv/bin/pip install {PYTHON_CLIENTS}\n\
         then run with EDGEBUS_PYTHON=$PWD/target/ci-venv/bin/python (.ci/run does both)"
    );
    python
}

/// Runs a Python script (at most 90 s) and parses the JSON it prints last.
fn run_python(script: &str, args: &[&str]) -> Value {
    let mut child = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let status = common::wait_with_deadline(&mut child, Duration::from_secs(90));
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let out = reader.join().unwrap();
    assert!(status.success(), "python script failed: {stderr}\n{out}");
    let last = out.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("bad JSON {last:?}: {e}\n{stderr}"))
}

/// A record as `edgebus consume --output json` prints it, as bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    offset: u64,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    timestamp: i64,
}

fn field_bytes(record: &Value, field: &str) -> Option<Vec<u8>> {
    let text = record[field].as_str()?;
    Some(match record[format!("{field}_encoding")].as_str() {
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap(),
        _ => text.as_bytes().to_vec(),
    })
}

/// `edgebus consume TOPIC --output json`, as bytes.
fn edgebus_consume(broker: &Broker, topic: &str) -> Vec<Seen> {
    broker
        .ok(&["consume", topic, "--output", "json"])
        .lines()
        .map(|line| {
            let r: Value = serde_json::from_str(line).unwrap();
            Seen {
                offset: r["offset"].as_u64().unwrap(),
                key: field_bytes(&r, "key"),
                value: field_bytes(&r, "value").unwrap(),
                headers: r["headers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|h| {
                        (
                            h["key"].as_str().unwrap().to_owned(),
                            field_bytes(h, "value").unwrap(),
                        )
                    })
                    .collect(),
                timestamp: r["timestamp"].as_i64().unwrap(),
            }
        })
        .collect()
}

/// kcat's `-f '%o\t%k\t%s\t%h\t%T\n'` lines, as records.
fn kcat_records(out: &str) -> Vec<Seen> {
    out.lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 5, "kcat line {line:?}");
            Seen {
                offset: f[0].parse().unwrap(),
                key: Some(f[1].as_bytes().to_vec()),
                value: f[2].as_bytes().to_vec(),
                headers: f[3]
                    .split(',')
                    .filter(|h| !h.is_empty())
                    .map(|h| {
                        let (k, v) = h.split_once('=').unwrap();
                        (k.to_owned(), v.as_bytes().to_vec())
                    })
                    .collect(),
                timestamp: f[4].parse().unwrap(),
            }
        })
        .collect()
}

/// kcat: keyed records with headers go in and come back, from the start,
/// from an offset and from a timestamp; `-L` shows the topic; and
/// `edgebus consume` reads exactly what kcat reads.
#[test]
fn kcat_keyed_records_with_headers_round_trip_and_edgebus_reads_the_same_bytes() {
    let (broker, kafka, _dir) = kafka_broker("");
    broker.ok(&["topic", "create", "kt", "--partitions", "1"]);
    let metadata = kcat_ok(&["-b", &kafka, "-L", "-t", "kt"], "");
    assert!(
        metadata.contains("topic \"kt\" with 1 partitions")
            && metadata.contains("partition 0, leader 0, replicas: 0, isrs: 0"),
        "{metadata}"
    );
    let produce = ["-b", &kafka, "-P", "-t", "kt", "-p", "0", "-K", ":"];
    let headers = ["-H", "origin=kcat", "-H", "trace=t1"];
    kcat_ok(&[&produce[..], &headers[..]].concat(), "k1:v1\nk2:v2\n");
    // A later call, so the last record has a later timestamp.
    std::thread::sleep(Duration::from_millis(20));
    kcat_ok(&[&produce[..], &headers[..]].concat(), "k3:v3\n");

    let consume = |from: &str| {
        kcat_records(&kcat_ok(
            &[
                "-b",
                &kafka,
                "-C",
                "-t",
                "kt",
                "-p",
                "0",
                "-e",
                "-o",
                from,
                "-f",
                "%o\t%k\t%s\t%h\t%T\n",
            ],
            "",
        ))
    };
    let all = consume("beginning");
    let keys: Vec<_> = all.iter().map(|r| r.key.clone().unwrap()).collect();
    assert_eq!(keys, [b"k1".to_vec(), b"k2".to_vec(), b"k3".to_vec()]);
    assert!(all.iter().all(|r| r.headers
        == [
            ("origin".to_owned(), b"kcat".to_vec()),
            ("trace".to_owned(), b"t1".to_vec())
        ]));
    assert_eq!(all.iter().map(|r| r.offset).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(consume("1"), all[1..]);
    assert!(all[2].timestamp > all[1].timestamp, "{all:?}");
    assert_eq!(consume(&format!("s@{}", all[2].timestamp)), all[2..]);
    // Across doors: kcat's records as the QUIC door's consumer sees them.
    assert_eq!(edgebus_consume(&broker, "kt"), all);

    // Ingest plugins run on Kafka produces as on QUIC ones.
    broker.ok(&["plugin", "add", "--bundled", "json-filter"]);
    broker.ok(&[
        "topic",
        "create",
        "hot",
        "--ingest",
        "json-filter:field=celsius,op=>=,value=0",
    ]);
    kcat_ok(
        &["-b", &kafka, "-P", "-t", "hot", "-p", "0"],
        "{\"celsius\":5}\n{\"celsius\":-5}\n{\"celsius\":7}\n",
    );
    let kept: Vec<Vec<u8>> = edgebus_consume(&broker, "hot")
        .into_iter()
        .map(|r| r.value)
        .collect();
    assert_eq!(
        kept,
        [b"{\"celsius\":5}".to_vec(), b"{\"celsius\":7}".to_vec()]
    );
    let read = kcat_ok(&["-b", &kafka, "-C", "-t", "hot", "-e", "-f", "%s\n"], "");
    assert_eq!(read, "{\"celsius\":5}\n{\"celsius\":7}\n");
}

/// Reads every record of a topic's partition 0 with kafka-python, as bytes
/// in hex; prints a JSON list.
const KAFKA_PYTHON_READ: &str = r#"
import json, sys, time
from kafka import KafkaConsumer, TopicPartition
bs, topic, want = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = KafkaConsumer(bootstrap_servers=bs, enable_auto_commit=False, group_id=None)
tp = TopicPartition(topic, 0)
c.assign([tp])
c.seek_to_beginning(tp)
out = []
deadline = time.time() + 30
while len(out) < want and time.time() < deadline:
    for msgs in c.poll(timeout_ms=200).values():
        for m in msgs:
            out.append({'offset': m.offset, 'timestamp': m.timestamp,
                        'key': None if m.key is None else m.key.hex(), 'value': m.value.hex(),
                        'headers': [[k, v.hex()] for k, v in m.headers]})
c.close()
print(json.dumps(out))
"#;

/// `edgebus produce` → kafka-python: key, value (binary too), headers and
/// timestamp are the bytes `edgebus consume` shows.
#[test]
fn edgebus_produce_is_read_by_kafka_python_byte_for_byte() {
    let (broker, kafka, _dir) = kafka_broker("");
    broker.ok(&["topic", "create", "mixed", "--partitions", "1"]);
    let mut produce = broker.command(&[
        "produce",
        "mixed",
        "--key-separator",
        ":",
        "-H",
        "origin=edgebus",
        "-H",
        "n=1",
    ]);
    let out = produce
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b"a:first\nb:second\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    let mut binary = broker.command(&["produce", "mixed", "--value-format", "hex", "-k", "bin"]);
    let out = binary
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b"ff00fe80\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());

    let expected = edgebus_consume(&broker, "mixed");
    assert_eq!(expected.len(), 3);
    let read = run_python(KAFKA_PYTHON_READ, &[&kafka, "mixed", "3"]);
    let hex = |v: &Value| hex::decode(v.as_str().unwrap()).unwrap();
    let seen: Vec<Seen> = read
        .as_array()
        .unwrap()
        .iter()
        .map(|r| Seen {
            offset: r["offset"].as_u64().unwrap(),
            key: (!r["key"].is_null()).then(|| hex(&r["key"])),
            value: hex(&r["value"]),
            headers: r["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| (h[0].as_str().unwrap().to_owned(), hex(&h[1])))
                .collect(),
            timestamp: r["timestamp"].as_i64().unwrap(),
        })
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(seen[2].value, [0xff, 0x00, 0xfe, 0x80]);
}

/// confluent-kafka: an idempotent producer with acks=all, and a topic
/// created with `compression.type=zstd` written by a zstd producer and a
/// plain one; everything read back, and described.
const CONFLUENT_PRODUCE: &str = r#"
import json, sys, time
from confluent_kafka import Producer, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, ConfigResource
bs = sys.argv[1]
admin = AdminClient({'bootstrap.servers': bs})
created = admin.create_topics([
    NewTopic('idem', num_partitions=3, replication_factor=1),
    NewTopic('zt', num_partitions=1, replication_factor=1, config={'compression.type': 'zstd'})])
for f in created.values():
    f.result(timeout=10)
def produce(topic, first, n, **conf):
    p = Producer({'bootstrap.servers': bs, 'linger.ms': 5, **conf})
    errors, acked = [], []
    def done(err, msg):
        if err: errors.append(str(err))
        else: acked.append((msg.partition(), msg.offset()))
    for i in range(first, first + n):
        p.produce(topic, key=b'k%d' % (i % 5), value=b'%d' % i, headers=[('i', b'%d' % i)], on_delivery=done)
    return {'errors': errors, 'left': p.flush(20), 'acked': len(acked), 'distinct': len(set(acked))}
def consume(topic, partitions, want):
    c = Consumer({'bootstrap.servers': bs, 'group.id': 'reader', 'enable.auto.commit': False})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    seen = []
    deadline = time.time() + 30
    while len(seen) < want and time.time() < deadline:
        m = c.poll(0.2)
        if m is not None and not m.error():
            seen.append(int(m.value()))
    c.close()
    return sorted(seen)
out = {
    'idem': produce('idem', 0, 300, **{'enable.idempotence': True, 'acks': 'all'}),
    'zstd': produce('zt', 0, 100, **{'compression.type': 'zstd', 'acks': 'all'}),
    'plain': produce('zt', 100, 100, **{'acks': 1}),
}
out['idem_read'] = consume('idem', 3, 300)
out['zt_read'] = consume('zt', 1, 200)
config = admin.describe_configs([ConfigResource('topic', 'zt')])
for f in config.values():
    out['zt_config'] = {k: v.value for k, v in f.result(timeout=10).items()}
print(json.dumps(out))
"#;

#[test]
fn confluent_kafka_idempotent_acks_all_and_zstd_topic() {
    let (broker, kafka, _dir) = kafka_broker("");
    let out = run_python(CONFLUENT_PRODUCE, &[&kafka]);
    for producer in ["idem", "zstd", "plain"] {
        let p = &out[producer];
        assert_eq!(p["errors"], serde_json::json!([]), "{producer}: {p}");
        assert_eq!(p["left"], 0, "{producer}: {p}");
        assert_eq!(p["acked"], p["distinct"], "{producer}: offsets reused: {p}");
    }
    let range = |n: u64| (0..n).collect::<Vec<_>>();
    assert_eq!(
        serde_json::from_value::<Vec<u64>>(out["idem_read"].clone()).unwrap(),
        range(300)
    );
    assert_eq!(
        serde_json::from_value::<Vec<u64>>(out["zt_read"].clone()).unwrap(),
        range(200)
    );
    assert_eq!(out["zt_config"]["compression.type"], "zstd", "{out}");
    assert_eq!(out["zt_config"]["cleanup.policy"], "delete", "{out}");
    // The same records through the QUIC door, headers and all.
    let zt = edgebus_consume(&broker, "zt");
    assert_eq!(zt.len(), 200);
    assert!(
        zt.iter()
            .enumerate()
            .all(|(i, r)| r.value == i.to_string().as_bytes()
                && r.headers == [("i".to_owned(), i.to_string().into_bytes())])
    );
    let describe: Value =
        serde_json::from_str(&broker.ok(&["topic", "describe", "zt", "--output", "json"])).unwrap();
    assert_eq!(describe["compression"], "zstd", "{describe}");
}

/// A confluent-kafka group of three members on six partitions: the split,
/// commits, one member leaving, the other two taking its partitions from
/// its commits. Prints what each phase saw.
const CONFLUENT_GROUP: &str = r#"
import json, sys, time
from confluent_kafka import Producer, Consumer
from confluent_kafka.admin import AdminClient, NewTopic
bs, topic, group = sys.argv[1:4]
admin = AdminClient({'bootstrap.servers': bs})
for f in admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)]).values():
    f.result(timeout=10)
p = Producer({'bootstrap.servers': bs, 'acks': 'all'})
def produce(first, n):
    for i in range(first, first + n):
        p.produce(topic, key=b'%d' % i, value=b'%d' % i)
    assert p.flush(20) == 0
conf = {'bootstrap.servers': bs, 'group.id': group, 'auto.offset.reset': 'earliest',
        'enable.auto.commit': False, 'session.timeout.ms': 6000, 'heartbeat.interval.ms': 200,
        'partition.assignment.strategy': 'range'}
members = [Consumer(dict(conf, **{'client.id': 'member%d' % i})) for i in range(3)]
for c in members:
    c.subscribe([topic])
def drain(consumers, want):
    seen = []
    deadline = time.time() + 40
    while len(seen) < want and time.time() < deadline:
        for c in consumers:
            m = c.poll(0.05)
            if m is not None and not m.error():
                seen.append([members.index(c), m.partition(), int(m.value())])
    return seen
produce(0, 600)
first = drain(members, 600)
first_assignment = [sorted(tp.partition for tp in c.assignment()) for c in members]
for c in members:
    c.commit(asynchronous=False)
members[2].close()
# New records only once the other two hold all six partitions: records
# read but not committed before a partition moves are read again (Kafka's
# at-least-once), which is not what this checks.
deadline = time.time() + 30
while time.time() < deadline and sorted(
        tp.partition for c in members[:2] for tp in c.assignment()) != list(range(6)):
    for c in members[:2]:
        c.poll(0.05)
produce(600, 300)
second = drain(members[:2], 300)
second_assignment = [sorted(tp.partition for tp in c.assignment()) for c in members[:2]]
for c in members[:2]:
    c.commit(asynchronous=False)
    c.close()
print(json.dumps({'first': first, 'first_assignment': first_assignment,
                  'second': second, 'second_assignment': second_assignment}))
"#;

/// kafka-python as a member of a group: reads until `want` records came,
/// waits a little for any extra, commits, leaves.
const KAFKA_PYTHON_GROUP: &str = r#"
import json, sys, time
from kafka import KafkaConsumer
bs, topic, group, want = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
c = KafkaConsumer(topic, bootstrap_servers=bs, group_id=group, auto_offset_reset='earliest',
                  enable_auto_commit=False)
seen = []
deadline = time.time() + 40
extra_until = None
while time.time() < deadline and (extra_until is None or time.time() < extra_until):
    for msgs in c.poll(timeout_ms=200).values():
        seen.extend(m.value.decode() for m in msgs)
    if len(seen) >= want and extra_until is None:
        extra_until = time.time() + 1
c.commit()
c.close()
print(json.dumps(seen))
"#;

/// A Kafka consumer group splits partitions, commits, survives a member
/// leaving without redelivering committed records, and then moves to
/// `edgebus consume --group` and back to a Kafka client (kafka-python)
/// without losing its place.
#[test]
fn kafka_group_of_three_splits_commits_resumes_and_moves_between_doors() {
    let (broker, kafka, _dir) = kafka_broker(FAST_GROUPS);
    let out = run_python(CONFLUENT_GROUP, &[&kafka, "grp", "g3"]);
    let values = |phase: &str| -> Vec<u64> {
        let mut v: Vec<u64> = out[phase]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[2].as_u64().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(values("first"), (0..600).collect::<Vec<_>>());
    assert_eq!(
        values("second"),
        (600..900).collect::<Vec<_>>(),
        "after a member left, the others resume from its commits"
    );
    let split = |phase: &str, members: usize| {
        let a: Vec<Vec<u64>> = serde_json::from_value(out[phase].clone()).unwrap();
        assert_eq!(a.len(), members);
        assert!(a.iter().all(|p| p.len() == 6 / members), "{phase}: {a:?}");
        let all: BTreeSet<u64> = a.iter().flatten().copied().collect();
        assert_eq!(all, (0..6).collect(), "{phase}: {a:?}");
    };
    split("first_assignment", 3);
    split("second_assignment", 2);
    let readers: BTreeSet<u64> = out["first"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_u64().unwrap())
        .collect();
    assert_eq!(readers.len(), 3, "every member read records");

    // The Kafka group's commits are the group's stored offsets.
    let described: Value =
        serde_json::from_str(&broker.ok(&["group", "describe", "g3", "--output", "json"])).unwrap();
    let committed: u64 = described["partitions"]
        .as_array()
        .unwrap_or_else(|| panic!("{described}"))
        .iter()
        .map(|p| p["committed"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(committed, 900, "{described}");

    // To edgebus: it reads only what came after the Kafka commits.
    let mut produce = broker.command(&["produce", "grp", "-k", "x"]);
    let out = produce
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b"e1\ne2\ne3\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    let read: BTreeSet<String> = broker
        .ok(&["consume", "grp", "--group", "g3"])
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(read, ["x\te1", "x\te2", "x\te3"].map(String::from).into());

    // And back to a Kafka client: it reads only what came after.
    let mut produce = broker.command(&["produce", "grp"]);
    let out = produce
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b"k1\nk2\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    let seen = run_python(KAFKA_PYTHON_GROUP, &[&kafka, "grp", "g3", "2"]);
    let mut seen: Vec<String> = serde_json::from_value(seen).unwrap();
    seen.sort();
    assert_eq!(seen, ["k1", "k2"]);
}

// ---- raw frames: what no well-behaved client sends ----

/// A request frame: length, header, body.
fn frame<R: Encodable>(api: ApiKey, version: i16, correlation_id: i32, body: &R) -> Vec<u8> {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("raw")))
        .encode(&mut buf, api.request_header_version(version))
        .unwrap();
    body.encode(&mut buf, version).unwrap();
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.to_vec()
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// The next response frame (without its length), or `None` once the
/// broker closed the connection.
fn response(s: &mut TcpStream) -> Option<Bytes> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
        Err(e) => panic!("reading a response: {e}"),
    }
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    Some(Bytes::from(body))
}

/// An ApiVersions v3 round trip: the connection is alive and served.
fn api_versions_ok(s: &mut TcpStream, correlation_id: i32) {
    s.write_all(&frame(
        ApiKey::ApiVersions,
        3,
        correlation_id,
        &ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("raw"))
            .with_client_software_version(StrBytes::from_static_str("1")),
    ))
    .unwrap();
    let mut r = response(s).expect("an ApiVersions answer");
    assert_eq!(r.get_i32(), correlation_id);
    let answer = ApiVersionsResponse::decode(&mut r, 3).unwrap();
    assert_eq!(answer.error_code, 0);
}

/// The door's refusal counters, from `/metrics`.
fn refusals(dir: &tempfile::TempDir) -> BTreeMap<String, u64> {
    let addr = std::fs::read_to_string(dir.path().join("metrics")).unwrap();
    let mut s = connect(&addr);
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("edgebus_kafka_refusals_total{reason=\""))
        .map(|l| {
            let (reason, value) = l.split_once("\"} ").unwrap();
            (reason.to_owned(), value.trim().parse().unwrap())
        })
        .collect()
}

/// Waits (bounded) until the broker closes `s`.
fn closed_by_broker(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Unknown API keys and versions are answered with UNSUPPORTED_VERSION
/// (an unknown ApiVersions version with Kafka's version-0 answer and the
/// supported list) and the connection lives on; a malformed body, a frame
/// that ends early, an oversized frame, an array count past the frame's
/// end and a request that never finishes each close only their own
/// connection, are counted, and everyone else is still served.
#[test]
fn kafka_bad_frames_are_refused_counted_and_others_keep_being_served() {
    let config = "[kafka]\nmax_frame_bytes = 4096\nrequest_read_timeout_ms = 300\n";
    let (_broker, kafka, dir) = kafka_broker(config);
    let mut bystander = connect(&kafka);
    api_versions_ok(&mut bystander, 1);

    // An API key no Kafka version has, then a known one at a version this
    // door does not serve: answered, and the connection still works.
    let mut s = connect(&kafka);
    let mut unknown = frame(ApiKey::ApiVersions, 0, 11, &ApiVersionsRequest::default());
    unknown[4..6].copy_from_slice(&999i16.to_be_bytes());
    s.write_all(&unknown).unwrap();
    let mut r = response(&mut s).unwrap();
    assert_eq!((r.get_i32(), r.get_i16()), (11, 35), "UNSUPPORTED_VERSION");
    let mut too_new = frame(ApiKey::Fetch, 12, 12, &FetchRequest::default());
    too_new[6..8].copy_from_slice(&99i16.to_be_bytes());
    s.write_all(&too_new).unwrap();
    let mut r = response(&mut s).unwrap();
    assert_eq!((r.get_i32(), r.get_i16()), (12, 35));
    let mut versions = frame(ApiKey::ApiVersions, 3, 13, &ApiVersionsRequest::default());
    versions[6..8].copy_from_slice(&99i16.to_be_bytes());
    s.write_all(&versions).unwrap();
    let mut r = response(&mut s).unwrap();
    assert_eq!(r.get_i32(), 13);
    let answer = ApiVersionsResponse::decode(&mut r, 0).unwrap();
    assert_eq!(answer.error_code, 35);
    assert!(
        answer
            .api_keys
            .iter()
            .any(|k| k.api_key == ApiKey::Produce as i16)
    );
    api_versions_ok(&mut s, 14);

    // A Metadata v0 whose topic array claims 2^31-1 entries in a 20-byte
    // frame: refused without trying to make room for them.
    let mut s = connect(&kafka);
    let mut bomb = frame(
        ApiKey::Metadata,
        0,
        21,
        &MetadataRequest::default().with_topics(Some(vec![])),
    );
    let n = bomb.len();
    bomb[n - 4..].copy_from_slice(&i32::MAX.to_be_bytes());
    s.write_all(&bomb).unwrap();
    assert!(closed_by_broker(&mut s));

    // A frame that ends before its declared length.
    let mut s = connect(&kafka);
    s.write_all(&100i32.to_be_bytes()).unwrap();
    s.write_all(&[0u8; 10]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(closed_by_broker(&mut s));

    // Over kafka.max_frame_bytes.
    let mut s = connect(&kafka);
    s.write_all(&(1i32 << 20).to_be_bytes()).unwrap();
    assert!(closed_by_broker(&mut s));

    // A request that never finishes: closed after request_read_timeout_ms.
    let mut s = connect(&kafka);
    s.write_all(&50i32.to_be_bytes()).unwrap();
    s.write_all(&[0u8; 5]).unwrap();
    assert!(closed_by_broker(&mut s));

    api_versions_ok(&mut bystander, 2);
    let counted = refusals(&dir);
    for (reason, at_least) in [
        ("unsupported", 3),
        ("malformed", 2),
        ("max_frame_bytes", 1),
        ("read_timeout", 1),
    ] {
        assert!(
            counted.get(reason).copied().unwrap_or(0) >= at_least,
            "{reason}: {counted:?}"
        );
    }
}

/// A Produce of `batch` to `topic`/0, at `acks`.
fn produce_frame(correlation_id: i32, topic: &'static str, acks: i16, batch: Bytes) -> Vec<u8> {
    let request = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5000)
        .with_topic_data(vec![
            produce_request::TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str(topic)))
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(batch)),
                ]),
        ]);
    frame(ApiKey::Produce, 9, correlation_id, &request)
}

/// The one partition's (error code, base offset) of a Produce v9 answer.
fn produced(s: &mut TcpStream, correlation_id: i32) -> (i16, i64) {
    let mut r = response(s).expect("a Produce answer");
    assert_eq!(r.get_i32(), correlation_id);
    let _ = r.get_u8(); // response header v1's tagged fields
    let answer = ProduceResponse::decode(&mut r, 9).unwrap();
    let p = &answer.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// An idempotent producer's batches go through the partition engine's
/// dedup state: a resent batch is acknowledged at its first offset and
/// not stored again, a gap in the sequence is OUT_OF_ORDER_SEQUENCE_NUMBER;
/// an acks=0 produce is stored and never answered.
#[test]
fn kafka_idempotent_producer_shares_the_engine_dedup_state() {
    use edgebus_proto::batch::{BatchBuilder, ProducerStamp, Record};
    let (broker, kafka, _dir) = kafka_broker("");
    broker.ok(&["topic", "create", "dedup", "--partitions", "1"]);
    let mut s = connect(&kafka);
    s.write_all(&frame(
        ApiKey::InitProducerId,
        4,
        1,
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    ))
    .unwrap();
    let mut r = response(&mut s).unwrap();
    assert_eq!(r.get_i32(), 1);
    let _ = r.get_u8();
    let init = InitProducerIdResponse::decode(&mut r, 4).unwrap();
    assert_eq!(init.error_code, 0);
    let batch = |base_sequence: i32, n: usize| {
        let mut b = BatchBuilder::new();
        for i in 0..n {
            b.push(&Record::now(format!("r{i}")));
        }
        b.finish(ProducerStamp {
            producer_id: init.producer_id.0,
            producer_epoch: init.producer_epoch,
            base_sequence,
        })
    };
    let first = batch(0, 3);
    s.write_all(&produce_frame(2, "dedup", -1, first.clone()))
        .unwrap();
    assert_eq!(produced(&mut s, 2), (0, 0));
    s.write_all(&produce_frame(3, "dedup", -1, first)).unwrap();
    assert_eq!(
        produced(&mut s, 3),
        (0, 0),
        "a retry is acked where it was stored"
    );
    s.write_all(&produce_frame(4, "dedup", 1, batch(3, 2)))
        .unwrap();
    assert_eq!(produced(&mut s, 4), (0, 3));
    s.write_all(&produce_frame(5, "dedup", -1, batch(9, 1)))
        .unwrap();
    assert_eq!(produced(&mut s, 5).0, 45, "OUT_OF_ORDER_SEQUENCE_NUMBER");
    // acks=0: no answer; the next request's answer is the next frame.
    s.write_all(&produce_frame(6, "dedup", 0, batch(5, 1)))
        .unwrap();
    api_versions_ok(&mut s, 7);
    let stored = edgebus_consume(&broker, "dedup");
    assert_eq!(stored.len(), 6, "{stored:?}");
}

/// `kafka.max_connections` closes the connection over the limit at
/// accept; `kafka.max_inflight_per_connection` = 1 reads a pipelined
/// request only after the one before it is answered, and answers stay in
/// request order; `kafka.idle_timeout_ms` closes a silent connection.
#[test]
fn kafka_connection_and_inflight_limits() {
    let config =
        "[kafka]\nmax_connections = 2\nmax_inflight_per_connection = 1\nidle_timeout_ms = 1500\n";
    let (broker, kafka, dir) = kafka_broker(config);
    broker.ok(&["topic", "create", "quiet", "--partitions", "1"]);
    let mut a = connect(&kafka);
    api_versions_ok(&mut a, 1);
    let mut b = connect(&kafka);
    api_versions_ok(&mut b, 1);
    let mut c = connect(&kafka);
    assert!(
        closed_by_broker(&mut c),
        "a third connection is over the limit"
    );
    assert_eq!(refusals(&dir).get("max_connections"), Some(&1));
    drop(b);

    // A Fetch that waits 500 ms for a record that never comes, with an
    // ApiVersions pipelined behind it.
    let fetch = FetchRequest::default()
        .with_max_wait_ms(500)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            fetch_request::FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("quiet")))
                .with_partitions(vec![
                    fetch_request::FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ]);
    let mut pipelined = frame(ApiKey::Fetch, 12, 7, &fetch);
    pipelined.extend(frame(
        ApiKey::ApiVersions,
        0,
        8,
        &ApiVersionsRequest::default(),
    ));
    let sent = Instant::now();
    a.write_all(&pipelined).unwrap();
    let mut first = response(&mut a).unwrap();
    assert_eq!(first.get_i32(), 7);
    let _ = first.get_u8(); // response header v1's tagged fields
    let fetched = FetchResponse::decode(&mut first, 12).unwrap();
    let partition = &fetched.responses[0].partitions[0];
    assert_eq!((partition.error_code, partition.high_watermark), (0, 0));
    let mut second = response(&mut a).unwrap();
    assert_eq!(second.get_i32(), 8);
    // Not read, so not answered, before the Fetch's wait was over.
    assert!(
        sent.elapsed() >= Duration::from_millis(450),
        "{:?}",
        sent.elapsed()
    );

    // kafka.idle_timeout_ms: a connection that sends nothing is closed.
    let idle_since = Instant::now();
    assert!(closed_by_broker(&mut a));
    assert!(idle_since.elapsed() >= Duration::from_millis(1000));
}

/// A client CA and a client certificate it signed, in `dir`: (CA, cert,
/// key) paths.
fn client_identity(dir: &std::path::Path) -> (String, String, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kafka test client CA");
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let key = rcgen::KeyPair::generate().unwrap();
    let ca = params.self_signed(&key).unwrap();
    let issuer = rcgen::Issuer::new(params, &key);
    let (cert, cert_key) = edgebus::tls::issue(
        &issuer,
        &["kcat"],
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    )
    .unwrap();
    let path = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    (
        path("client-ca.pem", &ca.pem()),
        path("client.pem", &cert),
        path("client.key", &cert_key),
    )
}

/// With TLS on (as off loopback, here forced on loopback) and
/// `tls.client_ca` set, kcat reaches the door over TLS with a client
/// certificate and the broker's local CA; without a certificate, or
/// without TLS, the handshake fails and is counted.
#[test]
fn kafka_tls_with_client_certificates() {
    let certs = tempfile::tempdir().unwrap();
    let (client_ca, cert, key) = client_identity(certs.path());
    let config = format!("[kafka]\ntls_on_loopback = true\n[tls]\nclient_ca = \"{client_ca}\"\n");
    let (broker, kafka, dir) = kafka_broker(&config);
    let created = broker
        .command(&["topic", "create", "secure", "--cert", &cert, "--key", &key])
        .output()
        .unwrap();
    assert!(created.status.success(), "{created:?}");
    let ca = broker.ca.to_str().unwrap().to_owned();
    let tls = [
        "-X".to_owned(),
        "security.protocol=ssl".to_owned(),
        "-X".to_owned(),
        format!("ssl.ca.location={ca}"),
    ];
    let identity = [
        "-X".to_owned(),
        format!("ssl.certificate.location={cert}"),
        "-X".to_owned(),
        format!("ssl.key.location={key}"),
    ];
    let args = |extra: &[String]| -> Vec<String> {
        let mut a: Vec<String> = ["-b", &kafka, "-m", "2", "-L", "-t", "secure"]
            .map(String::from)
            .to_vec();
        a.extend_from_slice(extra);
        a
    };
    let with_identity = args(&[&tls[..], &identity[..]].concat());
    let refs: Vec<&str> = with_identity.iter().map(String::as_str).collect();
    let metadata = kcat_ok(&refs, "");
    assert!(
        metadata.contains("topic \"secure\" with 1 partitions"),
        "{metadata}"
    );

    for (what, extra) in [("no client certificate", args(&tls)), ("no TLS", args(&[]))] {
        let out = kcat().args(&extra).output().unwrap();
        assert!(!out.status.success(), "{what}: kcat -L succeeded");
    }
    let handshakes = refusals(&dir).get("handshake").copied().unwrap_or(0);
    assert!(handshakes >= 2, "{:?}", refusals(&dir));
}

/// A JoinGroup v5 of a new member of `group`; returns (error, member id).
fn kafka_join(s: &mut TcpStream, correlation_id: i32, group: &'static str) -> (i16, String) {
    let request = JoinGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str(group)))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_protocol_type(StrBytes::from_static_str("consumer"))
        .with_protocols(vec![
            join_group_request::JoinGroupRequestProtocol::default()
                .with_name(StrBytes::from_static_str("range"))
                .with_metadata(Bytes::new()),
        ]);
    s.write_all(&frame(ApiKey::JoinGroup, 5, correlation_id, &request))
        .unwrap();
    let mut r = response(s).expect("a JoinGroup answer");
    assert_eq!(r.get_i32(), correlation_id);
    let answer = JoinGroupResponse::decode(&mut r, 5).unwrap();
    (answer.error_code, answer.member_id.to_string())
}

/// A group has members of one door at a time: `edgebus consume --group`
/// is refused while Kafka clients are members, and a Kafka JoinGroup gets
/// INCONSISTENT_GROUP_PROTOCOL while edgebus consumers are; once the
/// members leave, the other door may take over.
#[test]
fn kafka_and_edgebus_members_never_share_a_group() {
    let (broker, kafka, _dir) = kafka_broker("[kafka]\ninitial_rebalance_delay_ms = 0\n");
    broker.ok(&["topic", "create", "shared", "--partitions", "2"]);
    let mut s = connect(&kafka);
    let (error, member) = kafka_join(&mut s, 1, "by-kafka");
    assert_eq!(error, 0);
    let refused = broker.run(&["consume", "shared", "--group", "by-kafka"]);
    assert_eq!(refused.status.code(), Some(4), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Kafka door"),
        "{refused:?}"
    );
    let leave = LeaveGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("by-kafka")))
        .with_member_id(StrBytes::from_string(member));
    s.write_all(&frame(ApiKey::LeaveGroup, 1, 2, &leave))
        .unwrap();
    let mut r = response(&mut s).unwrap();
    assert_eq!(r.get_i32(), 2);
    assert_eq!(LeaveGroupResponse::decode(&mut r, 1).unwrap().error_code, 0);
    broker.ok(&["consume", "shared", "--group", "by-kafka"]);

    // The other way round: an edgebus member first.
    let mut follower = broker
        .command(&["consume", "shared", "--group", "by-edgebus", "--follow"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Unknown until the member has joined.
        let described = broker.run(&["group", "describe", "by-edgebus", "--output", "json"]);
        let d: Value = serde_json::from_slice(&described.stdout).unwrap_or(Value::Null);
        if d["members"].as_array().is_some_and(|m| !m.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "the edgebus member never joined");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (error, _) = kafka_join(&mut s, 3, "by-edgebus");
    assert_eq!(error, 23, "INCONSISTENT_GROUP_PROTOCOL");
    let _ = follower.kill();
    let _ = follower.wait();
}
