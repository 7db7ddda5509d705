//! The MQTT front door against real clients: `mosquitto_pub` and
//! `mosquitto_sub` (Debian `mosquitto-clients`) and Python's `paho-mqtt`
//! (from `$EDGEBUS_PYTHON`, the venv `.ci/run` makes), each talking to a
//! real `edgebus serve` process; the bad-input tests send raw bytes.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{Broker, free_tcp_port};
use rumqttc::v5::mqttbytes::{QoS, v5};
use serde_json::Value;

/// A broker with the MQTT door on, and its config file.
struct Mqtt {
    broker: Broker,
    port: u16,
    metrics_port: u16,
    /// Flags every `edgebus` client command needs (a client certificate).
    cli: Vec<String>,
    _conf: tempfile::TempDir,
}

impl Mqtt {
    /// Starts a broker whose `[mqtt]` section is `mqtt_toml` (plus the
    /// listener), with the mappings given as `--mqtt-map` flags.
    fn start(mqtt_toml: &str, maps: &[&str]) -> Mqtt {
        Mqtt::start_in(tempfile::tempdir().unwrap(), "", mqtt_toml, maps)
    }

    /// As [`Mqtt::start`], with the config file in `conf` and `top` above
    /// its `[mqtt]` section.
    fn start_in(conf: tempfile::TempDir, top: &str, mqtt_toml: &str, maps: &[&str]) -> Mqtt {
        let port = free_tcp_port();
        let metrics_port = free_tcp_port();
        let path = conf.path().join("edgebus.toml");
        std::fs::write(&path, format!("{top}\n[mqtt]\n{mqtt_toml}\n")).unwrap();
        let mut args = vec![
            "--config".to_owned(),
            path.to_str().unwrap().to_owned(),
            "--mqtt-listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--metrics-listen".to_owned(),
            format!("127.0.0.1:{metrics_port}"),
        ];
        for m in maps {
            args.push("--mqtt-map".to_owned());
            args.push((*m).to_owned());
        }
        Mqtt {
            broker: Broker::start_with(&args),
            port,
            metrics_port,
            cli: Vec::new(),
            _conf: conf,
        }
    }

    /// Runs an `edgebus` client command that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let cli: Vec<&str> = self.cli.iter().map(String::as_str).collect();
        self.broker.ok(&[args, &cli].concat())
    }

    fn pub_cmd(&self) -> Command {
        require("mosquitto_pub");
        let mut c = Command::new("mosquitto_pub");
        c.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        c
    }

    /// Runs mosquitto_pub with `args`.
    fn publish(&self, args: &[&str]) -> Output {
        self.pub_cmd().args(args).output().expect("mosquitto_pub")
    }

    /// Every record of `topic` as JSON, polling (bounded) until there are
    /// at least `want`: QoS 0 records are visible after the next fsync.
    fn records(&self, topic: &str, want: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.ok(&["consume", topic, "--output", "json"]);
            let records: Vec<Value> = out
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            if records.len() >= want || Instant::now() > deadline {
                return records;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `edgebus_refusals_total{limit="…"}` from /metrics.
    fn refusals(&self, limit: &str) -> u64 {
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics_port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        let prefix = format!("edgebus_refusals_total{{limit=\"{limit}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| v.trim().parse().unwrap())
    }
}

/// Fails with how to install a missing client program.
fn require(program: &str) {
    let found = Command::new(program)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "{program} is not installed: apt-get install mosquitto-clients (.ci/run does)"
    );
}

/// A Python that can import paho-mqtt: `$EDGEBUS_PYTHON` (set by
/// `.ci/run`), else `python3`.
fn python() -> String {
    let python = std::env::var("EDGEBUS_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let ok = Command::new(&python)
        .args(["-c", "import paho.mqtt"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{python} cannot import paho.mqtt: python3 -m venv target/ci-venv && \
         target/ci-venv/bin/pip install paho-mqtt==2.1.0, then run with \
         EDGEBUS_PYTHON=target/ci-venv/bin/python (.ci/run does this)"
    );
    python
}

/// Runs a paho script with `args`; returns its stdout.
fn paho(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("running python");
    assert!(
        out.status.success(),
        "paho script failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn header<'a>(record: &'a Value, key: &str) -> Option<&'a str> {
    record["headers"]
        .as_array()?
        .iter()
        .find(|h| h["key"] == key)
        .and_then(|h| h["value"].as_str())
}

#[test]
fn mosquitto_pub_qos_0_1_2_land_exactly_once_with_key_and_headers() {
    let m = Mqtt::start("", &["sensors/#=sensors"]);
    m.broker
        .ok(&["topic", "create", "sensors", "--partitions", "3"]);
    for qos in ["0", "1", "2"] {
        let topic = format!("sensors/v311/q{qos}");
        let out = m.publish(&["-q", qos, "-t", &topic, "-m", &format!("m311-{qos}")]);
        assert!(out.status.success(), "{out:?}");
        let topic = format!("sensors/v5/q{qos}");
        let out = m.publish(&[
            "-V",
            "mqttv5",
            "-q",
            qos,
            "-t",
            &topic,
            "-m",
            &format!("m5-{qos}"),
            "-D",
            "publish",
            "user-property",
            "unit",
            "celsius",
        ]);
        assert!(out.status.success(), "{out:?}");
    }
    let records = m.records("sensors", 6);
    let mut by_value: HashMap<&str, Vec<&Value>> = HashMap::new();
    for r in &records {
        by_value
            .entry(r["value"].as_str().unwrap())
            .or_default()
            .push(r);
    }
    for qos in ["0", "1", "2"] {
        for (version, value) in [("v311", format!("m311-{qos}")), ("v5", format!("m5-{qos}"))] {
            let found = by_value.get(value.as_str()).map_or(0, Vec::len);
            assert_eq!(found, 1, "{value} stored {found} times: {records:?}");
            let r = by_value[value.as_str()][0];
            let topic = format!("sensors/{version}/q{qos}");
            assert_eq!(r["key"], topic.as_str());
            assert_eq!(header(r, "mqtt-topic"), Some(topic.as_str()));
            let unit = (version == "v5").then_some("celsius");
            assert_eq!(header(r, "unit"), unit, "{r}");
        }
    }
    assert_eq!(records.len(), 6, "{records:?}");

    // Unmapped: 3.1.1 is disconnected, 5.0 gets "topic name invalid";
    // both are counted and nothing is stored.
    let before = m.refusals("mqtt_unmapped_topic");
    let out = m.publish(&["-q", "1", "-t", "elsewhere/x", "-m", "no"]);
    assert!(!out.status.success(), "3.1.1 unmapped publish succeeded");
    let out = m.publish(&["-V", "mqttv5", "-q", "1", "-t", "elsewhere/x", "-m", "no"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Topic Name invalid"),
        "{out:?}"
    );
    assert_eq!(m.refusals("mqtt_unmapped_topic"), before + 2);
    assert_eq!(m.records("sensors", 6).len(), 6);
}

#[test]
fn mosquitto_sub_receives_produced_records_after_the_retained_one() {
    let m = Mqtt::start("", &["commands/#=commands,retain"]);
    m.broker
        .ok(&["topic", "create", "commands", "--partitions", "2"]);
    let produce = |key: &str, value: &str| {
        let mut child = m
            .broker
            .command(&["produce", "commands", "-k", key])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{value}").unwrap();
        assert!(child.wait().unwrap().success());
    };
    produce("commands/dev1/reboot", "old");
    produce("commands/dev1/reboot", "older-is-replaced");
    require("mosquitto_sub");
    let mut sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &m.port.to_string()])
        .args([
            "-t",
            "commands/dev1/#",
            "-q",
            "1",
            "-v",
            "-C",
            "3",
            "-W",
            "20",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    // The retained message arrives right after SUBACK: the subscription is
    // in place from then on.
    let retained = lines.next().unwrap().unwrap();
    assert_eq!(retained, "commands/dev1/reboot older-is-replaced");
    produce("commands/dev2/reboot", "not-for-dev1");
    produce("commands/dev1/reboot", "now");
    let out = m.publish(&["-q", "1", "-t", "commands/dev1/led", "-m", "on"]);
    assert!(out.status.success());
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert_eq!(rest, ["commands/dev1/reboot now", "commands/dev1/led on"]);
    assert!(sub.wait().unwrap().success());
}

const PAHO_PUBLISH_V5: &str = r#"
import sys
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
port = int(sys.argv[1])
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-props", protocol=mqtt.MQTTv5)
c.connect("127.0.0.1", port)
c.loop_start()
props = Properties(PacketTypes.PUBLISH)
props.UserProperty = [("site", "north"), ("unit", "celsius")]
info = c.publish("sensors/paho/t1", b"21.5", qos=1, properties=props)
info.wait_for_publish(timeout=10)
assert info.is_published()
c.disconnect()
c.loop_stop()
print("published")
"#;

/// Connects with a persistent session (MQTT 5, session expiry one hour);
/// `subscribe` subscribes and leaves, `collect N` waits for N messages
/// (no new subscription) and prints them with the session-present flag.
const PAHO_SESSION: &str = r#"
import sys, time, threading
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
port, mode = int(sys.argv[1]), sys.argv[2]
got, subscribed, present = [], threading.Event(), []
def on_connect(c, u, flags, rc, props):
    present.append(flags.session_present)
    if mode == "subscribe":
        c.subscribe("alerts/dev9/#", qos=1)
def on_subscribe(c, u, mid, codes, props):
    subscribed.set()
def on_message(c, u, msg):
    got.append(msg.topic + " " + msg.payload.decode())
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-dev9", protocol=mqtt.MQTTv5)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
props = Properties(PacketTypes.CONNECT)
props.SessionExpiryInterval = 3600
c.connect("127.0.0.1", port, clean_start=False, properties=props)
c.loop_start()
deadline = time.time() + 15
if mode == "subscribe":
    assert subscribed.wait(15)
else:
    while len(got) < int(sys.argv[3]) and time.time() < deadline:
        time.sleep(0.05)
c.disconnect()
c.loop_stop()
print("present", present[0])
for g in got:
    print(g)
"#;

#[test]
fn paho_user_properties_become_headers_and_a_persistent_session_survives_a_restart() {
    let mut m = Mqtt::start("", &["sensors/#=sensors", "alerts/#=alerts"]);
    m.broker.ok(&["topic", "create", "sensors"]);
    m.broker
        .ok(&["topic", "create", "alerts", "--partitions", "2"]);
    let port = m.port.to_string();
    assert_eq!(paho(PAHO_PUBLISH_V5, &[&port]).trim(), "published");
    let records = m.records("sensors", 1);
    assert_eq!(records.len(), 1);
    assert_eq!(header(&records[0], "site"), Some("north"));
    assert_eq!(header(&records[0], "unit"), Some("celsius"));
    assert_eq!(header(&records[0], "mqtt-topic"), Some("sensors/paho/t1"));

    let out = paho(PAHO_SESSION, &[&port, "subscribe"]);
    assert!(out.starts_with("present False"), "{out}");
    // SIGKILL: the session must come back from the store.
    m.broker.restart();
    for i in 0..3 {
        let mut child = m
            .broker
            .command(&["produce", "alerts", "-k", &format!("alerts/dev9/a{i}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "missed-{i}").unwrap();
        assert!(child.wait().unwrap().success());
    }
    let out = paho(PAHO_SESSION, &[&port, "collect", "3"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "present True", "{out}");
    let mut got: Vec<&str> = lines[1..].to_vec();
    got.sort_unstable();
    assert_eq!(
        got,
        [
            "alerts/dev9/a0 missed-0",
            "alerts/dev9/a1 missed-1",
            "alerts/dev9/a2 missed-2"
        ]
    );
}

/// Publishes `sensors/k9` QoS 1 messages 0, 1, 2, … (each once: a new
/// connection after a failure goes on with the next number, so nothing is
/// retried) and prints each PUBACKed number, until `stop` exists.
const PAHO_KILL9_PUBLISHER: &str = r#"
import sys, os, time
import paho.mqtt.client as mqtt
port, stop = int(sys.argv[1]), sys.argv[2]
i = 0
# The network loop runs here, not in paho's thread, which would reconnect
# by itself and resend what was not acknowledged (QoS 1 is at least once).
while not os.path.exists(stop):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="k9", protocol=mqtt.MQTTv311)
    try:
        c.connect("127.0.0.1", port, keepalive=5)
    except OSError:
        time.sleep(0.05)
        continue
    alive = True
    while alive and not os.path.exists(stop):
        info = c.publish("sensors/k9", str(i).encode(), qos=1)
        i += 1
        deadline = time.time() + 2
        while not info.is_published():
            if c.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS or time.time() > deadline:
                alive = False
                break
        if alive:
            print(i - 1, flush=True)
    try:
        c.disconnect()
    except Exception:
        pass
"#;

#[test]
fn kill9_while_publishing_qos1_every_pubacked_message_is_stored_exactly_once() {
    let mut m = Mqtt::start("", &["sensors/#=sensors"]);
    m.broker.ok(&["topic", "create", "sensors"]);
    let dir = tempfile::tempdir().unwrap();
    let stop = dir.path().join("stop");
    let mut publisher: Child = Command::new(python())
        .arg("-c")
        .arg(PAHO_KILL9_PUBLISHER)
        .arg(m.port.to_string())
        .arg(&stop)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = publisher.stdout.take().unwrap();
    let acked = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map(|l| l.unwrap().parse::<u64>().unwrap())
            .collect::<Vec<u64>>()
    });
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(700));
        m.broker.restart();
    }
    std::thread::sleep(Duration::from_millis(700));
    std::fs::write(&stop, b"").unwrap();
    common::wait_with_deadline(&mut publisher, Duration::from_secs(20));
    let acked = acked.join().unwrap();
    assert!(acked.len() > 20, "too few acks to mean anything: {acked:?}");
    let mut stored: HashMap<u64, usize> = HashMap::new();
    for r in m.records("sensors", 0) {
        *stored
            .entry(r["value"].as_str().unwrap().parse().unwrap())
            .or_default() += 1;
    }
    for n in &acked {
        assert_eq!(
            stored.get(n),
            Some(&1),
            "PUBACKed {n} stored {:?} times",
            stored.get(n)
        );
    }
    assert!(stored.values().all(|&c| c == 1), "a message stored twice");
}

/// Sends a raw MQTT 5 CONNECT and reads the CONNACK.
fn connect_v5(port: u16, client_id: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let connect = v5::Connect {
        keep_alive: 30,
        client_id: client_id.into(),
        clean_start: true,
        properties: None,
    };
    let mut buf = BytesMut::new();
    v5::Packet::Connect(connect, None, None)
        .write(&mut buf, None)
        .unwrap();
    s.write_all(&buf).unwrap();
    match read_v5(&mut s) {
        Some(v5::Packet::ConnAck(ack)) => assert_eq!(ack.code, v5::ConnectReturnCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    s
}

/// The next MQTT 5 packet, or `None` when the broker closed. Reads
/// exactly one packet's bytes, so the next call finds the next packet.
fn read_v5(s: &mut TcpStream) -> Option<v5::Packet> {
    let mut buf = BytesMut::new();
    let mut byte = [0u8; 1];
    // The type byte, then the remaining length's bytes up to the last
    // (high bit clear).
    s.read_exact(&mut byte).ok()?;
    buf.extend_from_slice(&byte);
    let (mut remaining, mut shift) = (0usize, 0);
    loop {
        s.read_exact(&mut byte).ok()?;
        buf.extend_from_slice(&byte);
        remaining |= ((byte[0] & 0x7f) as usize) << shift;
        shift += 7;
        if byte[0] & 0x80 == 0 {
            break;
        }
    }
    let mut rest = vec![0u8; remaining];
    s.read_exact(&mut rest).ok()?;
    buf.extend_from_slice(&rest);
    Some(v5::Packet::read(&mut buf, None).expect("a packet the v5 codec reads"))
}

/// Reads until the broker closes (bounded by the read timeout).
fn closed(s: &mut TcpStream) -> bool {
    let mut chunk = [0u8; 256];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

#[test]
fn bad_input_is_refused_and_the_broker_keeps_serving_others() {
    let m = Mqtt::start(
        "connect_timeout_ms = 300\nmax_inflight_per_client = 2\nmax_packet_bytes = 1024",
        &["sensors/#=sensors"],
    );
    m.broker.ok(&["topic", "create", "sensors"]);
    let served = |value: &str| {
        let out = m.publish(&["-q", "1", "-t", "sensors/ok", "-m", value]);
        assert!(out.status.success(), "{out:?}");
    };

    // Garbage instead of a CONNECT: closed, counted.
    let mut garbage = TcpStream::connect(("127.0.0.1", m.port)).unwrap();
    garbage
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    garbage.write_all(&[0xff, 0x03, 1, 2, 3]).unwrap();
    assert!(closed(&mut garbage));

    // A CONNECT that never completes: closed after connect_timeout_ms,
    // while others are served.
    let mut half = TcpStream::connect(("127.0.0.1", m.port)).unwrap();
    half.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    half.write_all(&[0x10, 0x20, 0x00, 0x04, b'M']).unwrap();
    served("during-half-connect");
    assert!(closed(&mut half));
    assert_eq!(m.refusals("mqtt_connect_timeout"), 1);

    // A malformed packet after a good CONNECT (QoS 3): MQTT 5 DISCONNECT
    // "malformed packet".
    let mut bad = connect_v5(m.port, "bad-packet");
    bad.write_all(&[0x36, 0x04, 0x00, 0x01, b'a', 0x00])
        .unwrap();
    match read_v5(&mut bad) {
        Some(v5::Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, v5::DisconnectReasonCode::MalformedPacket)
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert!(m.refusals("mqtt_malformed_packet") >= 2);

    // Past the inflight limit: twenty QoS 1 publishes at once to a broker
    // that allows two unacknowledged.
    let mut greedy = connect_v5(m.port, "greedy");
    let mut burst = BytesMut::new();
    for pkid in 1..=20u16 {
        let mut p = v5::Publish::new("sensors/greedy", QoS::AtLeastOnce, "x", None);
        p.pkid = pkid;
        v5::Packet::Publish(p).write(&mut burst, None).unwrap();
    }
    greedy.write_all(&burst).unwrap();
    let disconnect = loop {
        match read_v5(&mut greedy) {
            Some(v5::Packet::PubAck(_)) => continue,
            other => break other,
        }
    };
    match disconnect {
        Some(v5::Packet::Disconnect(d)) => assert_eq!(
            d.reason_code,
            v5::DisconnectReasonCode::ReceiveMaximumExceeded
        ),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert_eq!(m.refusals("mqtt_max_inflight_per_client"), 1);
    served("after-greedy");

    // Over max_packet_bytes: MQTT 5 DISCONNECT "packet too large".
    let mut big = connect_v5(m.port, "big");
    let mut buf = BytesMut::new();
    let p = v5::Publish::new("sensors/big", QoS::AtMostOnce, vec![b'x'; 2048], None);
    v5::Packet::Publish(p).write(&mut buf, None).unwrap();
    big.write_all(&buf).unwrap();
    match read_v5(&mut big) {
        Some(v5::Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, v5::DisconnectReasonCode::PacketTooLarge)
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert_eq!(m.refusals("mqtt_max_packet_bytes"), 1);
    served("after-big");
    let values: Vec<String> = m
        .records("sensors", 3)
        .iter()
        .map(|r| r["value"].as_str().unwrap().to_owned())
        .filter(|v| v != "x")
        .collect();
    assert_eq!(values, ["during-half-connect", "after-greedy", "after-big"]);
}

/// MQTT 3.1.1 has no receive maximum to announce, and clients such as
/// rumqttc keep 100 QoS 1 publishes in flight by default: past the
/// broker's limit such a client is slowed down, not cut off.
#[test]
fn mqtt311_client_past_the_inflight_limit_waits_and_is_not_cut_off() {
    const MESSAGES: usize = 300;
    let m = Mqtt::start("max_inflight_per_client = 2", &["sensors/#=sensors"]);
    m.broker.ok(&["topic", "create", "sensors"]);
    let mut options = rumqttc::MqttOptions::new("eager", "127.0.0.1", m.port);
    options.set_inflight(40);
    let (client, mut connection) = rumqttc::Client::new(options, MESSAGES);
    for n in 0..MESSAGES {
        client
            .publish(
                "sensors/eager",
                rumqttc::QoS::AtLeastOnce,
                false,
                n.to_string(),
            )
            .unwrap();
    }
    let mut acked = 0;
    while acked < MESSAGES {
        match connection.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            other => panic!("after {acked} PUBACKs: {other:?}"),
        }
    }
    let values: Vec<String> = m
        .records("sensors", MESSAGES)
        .iter()
        .map(|r| r["value"].as_str().unwrap().to_owned())
        .collect();
    let sent: Vec<String> = (0..MESSAGES).map(|n| n.to_string()).collect();
    assert_eq!(values, sent);
    assert_eq!(m.refusals("mqtt_max_inflight_per_client"), 0);
}

#[test]
fn logins_are_checked_against_hashed_passwords_and_anonymous_is_refused() {
    let hash = edgebus::mqtt::config::hash_password(
        "s3cret",
        b"salty",
        std::num::NonZeroU32::new(1000).unwrap(),
    );
    let m = Mqtt::start(
        &format!(
            "allow_anonymous = false\n[[mqtt.users]]\nname = \"dev\"\npassword_hash = \"{hash}\""
        ),
        &["sensors/#=sensors"],
    );
    m.broker.ok(&["topic", "create", "sensors"]);
    let login = ["-u", "dev", "-P", "s3cret"];
    let out = m.publish(&[&login[..], &["-t", "sensors/a", "-m", "1", "-q", "1"]].concat());
    assert!(out.status.success(), "{out:?}");
    let out = m.publish(&["-u", "dev", "-P", "wrong", "-t", "sensors/a", "-m", "2"]);
    assert!(!out.status.success());
    let out = m.publish(&["-t", "sensors/a", "-m", "3"]);
    assert!(!out.status.success(), "anonymous allowed");
    assert_eq!(m.refusals("mqtt_not_authorized"), 2);
    assert_eq!(m.records("sensors", 1).len(), 1);
}

#[test]
fn limits_on_clients_and_subscriptions_are_typed_refusals() {
    let m = Mqtt::start(
        "max_clients = 1\nmax_subscriptions_per_client = 1",
        &["sensors/#=sensors"],
    );
    m.broker.ok(&["topic", "create", "sensors"]);

    // One client connected: the next gets "server busy".
    let mut first = TcpStream::connect(("127.0.0.1", m.port)).unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut connect = v5::Connect {
        keep_alive: 30,
        client_id: "first".into(),
        clean_start: true,
        properties: None,
    };
    let mut buf = BytesMut::new();
    v5::Packet::Connect(connect.clone(), None, None)
        .write(&mut buf, None)
        .unwrap();
    first.write_all(&buf).unwrap();
    assert!(
        matches!(read_v5(&mut first), Some(v5::Packet::ConnAck(a)) if a.code == v5::ConnectReturnCode::Success)
    );
    let mut second = TcpStream::connect(("127.0.0.1", m.port)).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    connect.client_id = "second".into();
    let mut buf = BytesMut::new();
    v5::Packet::Connect(connect, None, None)
        .write(&mut buf, None)
        .unwrap();
    second.write_all(&buf).unwrap();
    match read_v5(&mut second) {
        Some(v5::Packet::ConnAck(a)) => assert_eq!(a.code, v5::ConnectReturnCode::ServerBusy),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    assert_eq!(m.refusals("mqtt_max_clients"), 1);

    // Two filters where one subscription is allowed: the second refused.
    let subscribe = v5::Subscribe::new_many(
        [
            v5::Filter::new("sensors/a", QoS::AtLeastOnce),
            v5::Filter::new("sensors/b", QoS::AtLeastOnce),
        ],
        None,
    );
    let mut buf = BytesMut::new();
    let mut subscribe = subscribe;
    subscribe.pkid = 1;
    v5::Packet::Subscribe(subscribe)
        .write(&mut buf, None)
        .unwrap();
    first.write_all(&buf).unwrap();
    match read_v5(&mut first) {
        Some(v5::Packet::SubAck(a)) => assert_eq!(
            a.return_codes,
            [
                v5::SubscribeReasonCode::Success(QoS::AtLeastOnce),
                v5::SubscribeReasonCode::TopicFilterInvalid
            ]
        ),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    assert_eq!(m.refusals("mqtt_max_subscriptions_per_client"), 1);
    drop(first);
    // The slot frees once the broker notices the first client left.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = m.publish(&["-t", "sensors/a", "-m", "4"]);
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed: {out:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends a raw MQTT 5 CONNECT with a persistent session (and a will);
/// returns the stream and the CONNACK's session-present flag.
fn connect_v5_session(
    port: u16,
    client_id: &str,
    keep_alive: u16,
    will: Option<v5::LastWill>,
) -> (TcpStream, bool) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut properties = v5::ConnectProperties::new();
    properties.session_expiry_interval = Some(3600);
    let connect = v5::Connect {
        keep_alive,
        client_id: client_id.into(),
        clean_start: false,
        properties: Some(properties),
    };
    send(&mut s, v5::Packet::Connect(connect, will, None));
    match read_v5(&mut s) {
        Some(v5::Packet::ConnAck(ack)) => {
            assert_eq!(ack.code, v5::ConnectReturnCode::Success);
            (s, ack.session_present)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

fn send(s: &mut TcpStream, packet: v5::Packet) {
    let mut buf = BytesMut::new();
    packet.write(&mut buf, None).unwrap();
    s.write_all(&buf).unwrap();
}

fn qos2_publish(pkid: u16, dup: bool) -> v5::Packet {
    let mut p = v5::Publish::new("sensors/once", QoS::ExactlyOnce, "exactly-once", None);
    p.pkid = pkid;
    p.dup = dup;
    v5::Packet::Publish(p)
}

fn expect_pubrec(s: &mut TcpStream, pkid: u16) {
    match read_v5(s) {
        Some(v5::Packet::PubRec(r)) => {
            assert_eq!((r.pkid, r.reason), (pkid, v5::PubRecReason::Success))
        }
        other => panic!("expected PUBREC, got {other:?}"),
    }
}

#[test]
fn qos2_retransmissions_are_stored_once_even_across_a_sigkill() {
    let mut m = Mqtt::start("", &["sensors/#=sensors"]);
    m.broker
        .ok(&["topic", "create", "sensors", "--partitions", "2"]);
    // Within a connection: the same packet id again before PUBREL.
    let (mut c, _) = connect_v5_session(m.port, "qos2-dev", 30, None);
    send(&mut c, qos2_publish(5, false));
    expect_pubrec(&mut c, 5);
    send(&mut c, qos2_publish(5, true));
    expect_pubrec(&mut c, 5);
    // Across a SIGKILL with the PUBREL not yet sent: the session resumes
    // and the client retransmits, as MQTT requires of it.
    send(&mut c, qos2_publish(6, false));
    expect_pubrec(&mut c, 6);
    drop(c);
    m.broker.restart();
    let (mut c, present) = connect_v5_session(m.port, "qos2-dev", 30, None);
    assert!(present);
    send(&mut c, qos2_publish(6, true));
    expect_pubrec(&mut c, 6);
    for pkid in [5, 6] {
        send(&mut c, v5::Packet::PubRel(v5::PubRel::new(pkid, None)));
        match read_v5(&mut c) {
            Some(v5::Packet::PubComp(p)) => assert_eq!(p.pkid, pkid),
            other => panic!("expected PUBCOMP, got {other:?}"),
        }
    }
    // The packet id is free again: a new message under it is stored.
    send(&mut c, qos2_publish(5, false));
    expect_pubrec(&mut c, 5);
    let records = m.records("sensors", 3);
    assert_eq!(records.len(), 3, "{records:?}");
}

#[test]
fn persistent_session_gets_unacknowledged_qos1_again_and_a_lost_client_its_will() {
    let m = Mqtt::start("", &["alerts/#=alerts", "status/#=status"]);
    m.broker.ok(&["topic", "create", "alerts"]);
    m.broker.ok(&["topic", "create", "status"]);
    let will = v5::LastWill::new("status/dev3", "offline", QoS::AtLeastOnce, false, None);
    let (mut c, present) = connect_v5_session(m.port, "dev3", 30, Some(will));
    assert!(!present);
    let mut sub = v5::Subscribe::new(v5::Filter::new("alerts/dev3/#", QoS::AtLeastOnce), None);
    sub.pkid = 1;
    send(&mut c, v5::Packet::Subscribe(sub));
    assert!(matches!(read_v5(&mut c), Some(v5::Packet::SubAck(_))));
    let out = m.publish(&["-q", "1", "-t", "alerts/dev3/fire", "-m", "evacuate"]);
    assert!(out.status.success());
    match read_v5(&mut c) {
        Some(v5::Packet::Publish(p)) => {
            assert_eq!(
                (&p.payload[..], p.qos),
                (&b"evacuate"[..], QoS::AtLeastOnce)
            )
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    // Gone without PUBACK or DISCONNECT: the will is stored, and the
    // delivery comes again on the next connection.
    drop(c);
    let wills = m.records("status", 1);
    assert_eq!(wills.len(), 1);
    assert_eq!(
        (&wills[0]["key"], &wills[0]["value"]),
        (&Value::from("status/dev3"), &Value::from("offline"))
    );
    let (mut c, present) = connect_v5_session(m.port, "dev3", 30, None);
    assert!(present);
    match read_v5(&mut c) {
        Some(v5::Packet::Publish(p)) => {
            assert_eq!(&p.payload[..], b"evacuate");
            send(&mut c, v5::Packet::PubAck(v5::PubAck::new(p.pkid, None)));
        }
        other => panic!("expected the PUBLISH again, got {other:?}"),
    }
    // A normal DISCONNECT: no will.
    send(
        &mut c,
        v5::Packet::Disconnect(v5::Disconnect::new(
            v5::DisconnectReasonCode::NormalDisconnection,
        )),
    );
    assert!(closed(&mut c));
    assert_eq!(m.records("status", 1).len(), 1);
}

#[test]
fn silent_client_is_disconnected_after_one_and_a_half_keep_alives() {
    let m = Mqtt::start("", &["sensors/#=sensors"]);
    // The broker's clock starts when it reads the CONNECT, after this one.
    let started = Instant::now();
    let (mut c, _) = connect_v5_session(m.port, "quiet", 1, None);
    match read_v5(&mut c) {
        Some(v5::Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, v5::DisconnectReasonCode::KeepAliveTimeout)
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

#[test]
fn ingest_plugins_run_on_mqtt_publishes() {
    let m = Mqtt::start("", &["sensors/#=sensors"]);
    m.broker.ok(&["plugin", "add", "--bundled", "json-filter"]);
    m.broker.ok(&[
        "topic",
        "create",
        "sensors",
        "--ingest",
        "json-filter:field=celsius,op=>=,value=0",
    ]);
    for value in [r#"{"celsius":-5}"#, r#"{"celsius":5}"#] {
        let out = m.publish(&["-q", "1", "-t", "sensors/t", "-m", value]);
        assert!(out.status.success(), "{out:?}");
    }
    let values: Vec<Value> = m
        .records("sensors", 1)
        .into_iter()
        .map(|r| r["value"].clone())
        .collect();
    assert_eq!(values, [Value::from(r#"{"celsius":5}"#)]);
}

/// A client CA and a client certificate for `name` it signed, in `dir`:
/// (CA, certificate, key) paths.
fn client_certificate(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "device CA");
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let key = rcgen::KeyPair::generate().unwrap();
    let ca = params.self_signed(&key).unwrap();
    let issuer = rcgen::Issuer::new(params, &key);
    let (cert, cert_key) =
        edgebus::tls::issue(&issuer, &[name], rcgen::ExtendedKeyUsagePurpose::ClientAuth).unwrap();
    let paths = (
        dir.join("client-ca.pem"),
        dir.join("client.pem"),
        dir.join("client.key"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert).unwrap();
    std::fs::write(&paths.2, cert_key).unwrap();
    paths
}

#[test]
fn mqtt_over_tls_with_a_client_certificate_as_the_identity() {
    let conf = tempfile::tempdir().unwrap();
    let (client_ca, cert, key) = client_certificate(conf.path(), "dev-7");
    let tls_port = free_tcp_port();
    let mut m = Mqtt::start_in(
        conf,
        &format!("[tls]\nclient_ca = {:?}", client_ca.to_str().unwrap()),
        &format!("tls_listen = \"127.0.0.1:{tls_port}\"\nallow_anonymous = false"),
        &["sensors/#=sensors"],
    );
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    m.cli = ["--cert", cert, "--key", key].map(str::to_owned).to_vec();
    m.ok(&["topic", "create", "sensors"]);
    let ca = m.broker.ca.to_str().unwrap().to_owned();
    let tls_pub = |extra: &[&str]| {
        let mut c = m.pub_cmd();
        c.args(["-p", &tls_port.to_string(), "--cafile", &ca, "-q", "1"]);
        c.args(["-t", "sensors/dev-7", "-m", "over-tls"])
            .args(extra);
        c.output().unwrap()
    };
    let out = tls_pub(&["--cert", cert, "--key", key]);
    assert!(out.status.success(), "{out:?}");
    // A username other than the certificate's name is refused, and so is a
    // client without a certificate (at the handshake).
    let out = tls_pub(&["--cert", cert, "--key", key, "-u", "someone-else"]);
    assert!(!out.status.success(), "{out:?}");
    let out = tls_pub(&[]);
    assert!(!out.status.success(), "{out:?}");
    let values: Vec<Value> = m
        .records("sensors", 1)
        .into_iter()
        .map(|r| r["value"].clone())
        .collect();
    assert_eq!(values, [Value::from("over-tls")]);
}

#[test]
fn a_second_connection_with_the_same_client_id_takes_the_session_over() {
    let m = Mqtt::start("", &["alerts/#=alerts"]);
    m.broker.ok(&["topic", "create", "alerts"]);
    let (mut first, _) = connect_v5_session(m.port, "twin", 30, None);
    let mut sub = v5::Subscribe::new(v5::Filter::new("alerts/#", QoS::AtLeastOnce), None);
    sub.pkid = 1;
    send(&mut first, v5::Packet::Subscribe(sub));
    assert!(matches!(read_v5(&mut first), Some(v5::Packet::SubAck(_))));
    let (mut second, present) = connect_v5_session(m.port, "twin", 30, None);
    assert!(present, "the subscription was saved before SUBACK");
    match read_v5(&mut first) {
        Some(v5::Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, v5::DisconnectReasonCode::SessionTakenOver)
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    // The session, subscription included, is the second connection's.
    let out = m.publish(&["-q", "1", "-t", "alerts/x", "-m", "to-the-second"]);
    assert!(out.status.success());
    match read_v5(&mut second) {
        Some(v5::Packet::Publish(p)) => assert_eq!(&p.payload[..], b"to-the-second"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

#[test]
fn pipelined_qos1_publishes_are_acknowledged_in_order_and_stored_once() {
    let m = Mqtt::start("", &["sensors/#=sensors"]);
    m.broker
        .ok(&["topic", "create", "sensors", "--partitions", "2"]);
    let mut c = connect_v5(m.port, "pipeliner");
    // Two devices' topics interleaved in runs, in one write: consecutive
    // publishes to one partition share a batch, and PUBACKs keep order.
    let mut burst = BytesMut::new();
    for pkid in 1..=24u16 {
        let topic = if pkid % 8 < 4 {
            "sensors/a"
        } else {
            "sensors/b"
        };
        let mut p = v5::Publish::new(topic, QoS::AtLeastOnce, pkid.to_string(), None);
        p.pkid = pkid;
        v5::Packet::Publish(p).write(&mut burst, None).unwrap();
    }
    c.write_all(&burst).unwrap();
    for pkid in 1..=24u16 {
        match read_v5(&mut c) {
            Some(v5::Packet::PubAck(a)) => {
                assert_eq!((a.pkid, a.reason), (pkid, v5::PubAckReason::Success))
            }
            other => panic!("expected PUBACK {pkid}, got {other:?}"),
        }
    }
    let mut values: Vec<u16> = m
        .records("sensors", 24)
        .iter()
        .map(|r| r["value"].as_str().unwrap().parse().unwrap())
        .collect();
    values.sort_unstable();
    assert_eq!(values, (1..=24).collect::<Vec<u16>>());
}

/// Publishes of many connections to one partition are appended as one
/// batch: a publish the produce path refuses (here: over the topic's
/// `max.message.bytes`) is refused to its own client only, and the
/// others' publishes that arrived with it are still stored and
/// acknowledged.
#[test]
fn a_refused_publish_refuses_only_its_own_client() {
    let m = Mqtt::start("", &["sensors/#=sensors"]);
    m.broker.ok(&[
        "topic",
        "create",
        "sensors",
        "--partitions",
        "1",
        "--max-message-bytes",
        "200",
    ]);
    let mut big = connect_v5(m.port, "too-big");
    let mut small = connect_v5(m.port, "small");
    // Each round within the receive maximum (32: the dedup window).
    let (rounds, per_round) = (5u16, 20u16);
    for round in 0..rounds {
        let mut p = v5::Publish::new("sensors/big", QoS::AtLeastOnce, vec![b'x'; 1000], None);
        p.pkid = round + 1;
        let mut burst = BytesMut::new();
        for i in 0..per_round {
            let pkid = round * per_round + i + 1;
            let mut p = v5::Publish::new("sensors/small", QoS::AtLeastOnce, pkid.to_string(), None);
            p.pkid = pkid;
            v5::Packet::Publish(p).write(&mut burst, None).unwrap();
        }
        // Both at once, so the two clients' publishes reach the
        // partition together.
        send(&mut big, v5::Packet::Publish(p));
        small.write_all(&burst).unwrap();
        match read_v5(&mut big) {
            Some(v5::Packet::PubAck(a)) => assert_eq!(
                (a.pkid, a.reason),
                (round + 1, v5::PubAckReason::UnspecifiedError)
            ),
            other => panic!("expected a refusing PUBACK, got {other:?}"),
        }
        for i in 0..per_round {
            let pkid = round * per_round + i + 1;
            match read_v5(&mut small) {
                Some(v5::Packet::PubAck(a)) => {
                    assert_eq!((a.pkid, a.reason), (pkid, v5::PubAckReason::Success))
                }
                other => panic!("expected PUBACK {pkid}, got {other:?}"),
            }
        }
    }
    let records = m.records("sensors", (rounds * per_round) as usize);
    let values: Vec<u16> = records
        .iter()
        .map(|r| r["value"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(values, (1..=rounds * per_round).collect::<Vec<u16>>());
}
