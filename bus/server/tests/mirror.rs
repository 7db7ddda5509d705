//! Edge-to-hub mirroring with real `edgebus serve` processes on 127.0.0.1,
//! through a UDP relay of the test's own that cuts the link, drops a
//! fraction of datagrams and delays them.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use common::{BIN, Broker};

/// A UDP relay between edge and hub: datagrams from any client go to the
/// hub from a socket of their own, and the hub's answers go back.
struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Datagrams dropped per thousand.
    loss_per_mille: Arc<AtomicU32>,
    delay_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

/// How long relay sockets block before checking whether to stop.
const RELAY_POLL: Duration = Duration::from_millis(50);

impl Relay {
    fn start(hub: SocketAddr) -> Relay {
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        front.set_read_timeout(Some(RELAY_POLL)).unwrap();
        let relay = Relay {
            addr: front.local_addr().unwrap(),
            cut: Arc::default(),
            loss_per_mille: Arc::default(),
            delay_ms: Arc::default(),
            stop: Arc::default(),
        };
        // Delayed datagrams leave in order from one sender thread: the delay
        // is the same for all, so arrival order is departure order.
        let (tx, rx) = mpsc::channel::<(Instant, Arc<UdpSocket>, SocketAddr, Vec<u8>)>();
        let stop = relay.stop.clone();
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((at, socket, to, datagram)) = rx.recv_timeout(RELAY_POLL) else {
                    continue;
                };
                if let Some(wait) = at.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
                let _ = socket.send_to(&datagram, to);
            }
        });
        let front = Arc::new(front);
        let uplinks: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
        let (cut, loss, delay, stop) = (
            relay.cut.clone(),
            relay.loss_per_mille.clone(),
            relay.delay_ms.clone(),
            relay.stop.clone(),
        );
        thread::spawn(move || {
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            let mut buf = vec![0u8; 65_536];
            let pass = move |seed: &mut u64| {
                // xorshift: a deterministic loss pattern per run.
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                !cut.load(Ordering::Relaxed)
                    && (*seed % 1000) as u32 >= loss.load(Ordering::Relaxed)
            };
            let send = {
                let tx = tx.clone();
                move |socket: &Arc<UdpSocket>, to: SocketAddr, data: &[u8]| {
                    let at = Instant::now() + Duration::from_millis(delay.load(Ordering::Relaxed));
                    let _ = tx.send((at, socket.clone(), to, data.to_vec()));
                }
            };
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, client)) = front.recv_from(&mut buf) else {
                    continue;
                };
                let uplink = {
                    let mut uplinks = uplinks.lock().unwrap();
                    uplinks
                        .entry(client)
                        .or_insert_with(|| {
                            let up = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
                            up.set_read_timeout(Some(RELAY_POLL)).unwrap();
                            let (up2, front2, stop2, send2) =
                                (up.clone(), front.clone(), stop.clone(), send.clone());
                            let pass2 = pass.clone();
                            thread::spawn(move || {
                                let mut seed = 0x2545_f491_4f6c_dd1du64;
                                let mut buf = vec![0u8; 65_536];
                                while !stop2.load(Ordering::Relaxed) {
                                    if let Ok(n) = up2.recv(&mut buf)
                                        && pass2(&mut seed)
                                    {
                                        send2(&front2, client, &buf[..n]);
                                    }
                                }
                            });
                            up
                        })
                        .clone()
                };
                if pass(&mut seed) {
                    send(&uplink, hub, &buf[..n]);
                }
            }
        });
        relay
    }

    fn cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Produces `lines` into `topic` on `broker`; they are acknowledged iff the
/// command succeeds.
fn produce(broker: &Broker, topic: &str, lines: &[String]) {
    let mut child = broker
        .command(&["produce", topic, "--key-separator", ":"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for line in lines {
        writeln!(stdin, "{line}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "produce failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every record of `topic` as `partition offset key value timestamp`,
/// sorted.
fn records(broker: &Broker, topic: &str) -> Vec<String> {
    let out = broker.ok(&["consume", topic, "--from", "earliest", "--output", "json"]);
    let mut records: Vec<String> = out
        .lines()
        .map(|line| {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            format!(
                "{} {} {} {} {}",
                r["partition"], r["offset"], r["key"], r["value"], r["timestamp"]
            )
        })
        .collect();
    records.sort();
    records
}

fn mirror_json(edge: &Broker, name: &str) -> serde_json::Value {
    let out = edge.ok(&["mirror", "describe", name, "--output", "json"]);
    serde_json::from_str(out.trim()).unwrap()
}

/// Waits until the mirror has no lag and the hub's copy has the edge's log
/// ends; panics with the mirror's state after `limit`.
fn wait_caught_up(edge: &Broker, name: &str, limit: Duration) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let m = mirror_json(edge, name);
        let partitions = m["partitions"].as_array().unwrap();
        if m["state"] == "connected"
            && partitions
                .iter()
                .all(|p| p["lag_records"] == 0 && p["delivered"] == p["log_end"])
        {
            return m;
        }
        assert!(Instant::now() < deadline, "mirror not caught up: {m}");
        thread::sleep(Duration::from_millis(100));
    }
}

fn create_mirror(edge: &Broker, hub: &Broker, to: &str, extra: &[&str]) {
    let out = Command::new(BIN)
        .args(["mirror", "create", "m1", "--topic", "sensors", "--to", to])
        .arg("--ca")
        .arg(&hub.ca)
        .args(["--broker", &edge.addr, "--broker-ca"])
        .arg(&edge.ca)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mirror create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn lines(from: usize, n: usize, value_bytes: usize) -> Vec<String> {
    (from..from + n)
        .map(|i| {
            format!(
                "k{}:{{\"seq\":{i},\"pad\":\"{}\"}}",
                i % 7,
                "x".repeat(value_bytes)
            )
        })
        .collect()
}

/// Relay cuts, a hub SIGKILL and an edge SIGKILL while records keep
/// coming: afterwards the hub holds exactly the edge's acknowledged
/// records, at the same partitions and offsets, none twice.
#[test]
fn mirror_through_outages_and_kills_hub_holds_exactly_the_edge_records() {
    let mut hub = Broker::start();
    let mut edge = Broker::start();
    let relay = Relay::start(hub.addr.parse().unwrap());
    edge.ok(&["topic", "create", "sensors", "--partitions", "3"]);
    create_mirror(
        &edge,
        &hub,
        &relay.addr.to_string(),
        &["--compression", "zstd"],
    );
    let mut produced = 0;
    let mut step = |edge: &Broker, n: usize| {
        produce(edge, "sensors", &lines(produced, n, 40));
        produced += n;
    };
    step(&edge, 300);
    wait_caught_up(&edge, "m1", Duration::from_secs(15));

    // The link is cut: the edge keeps accepting, the mirror backs off.
    relay.cut(true);
    step(&edge, 300);
    thread::sleep(Duration::from_millis(1500));
    step(&edge, 300);
    relay.cut(false);
    step(&edge, 100);
    wait_caught_up(&edge, "m1", Duration::from_secs(30));

    // The hub dies without warning while records arrive.
    hub.restart();
    step(&edge, 300);

    // The link drops again, and the edge dies without warning.
    relay.cut(true);
    step(&edge, 300);
    edge.restart();
    step(&edge, 200);
    relay.cut(false);
    let m = wait_caught_up(&edge, "m1", Duration::from_secs(45));
    assert!(m["records_sent"].as_u64().unwrap() > 0, "{m}");

    let on_edge = records(&edge, "sensors");
    let on_hub = records(&hub, "sensors");
    assert_eq!(
        on_edge.len(),
        produced,
        "the edge holds every acknowledged record"
    );
    assert_eq!(
        on_hub, on_edge,
        "the hub's copy is the edge's, offsets and all"
    );

    // Nothing else may write the destination: its offsets are the edge's.
    let refused = hub
        .command(&["produce", "sensors"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            writeln!(c.stdin.take().unwrap(), "intruder")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("mirror destination"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// The outage test with a `json-filter` on the link: exactly the matching
/// records arrive, each once, each with its source partition and offset in
/// headers, however the link, the hub and the edge fail.
#[test]
fn mirror_with_a_json_filter_through_outages_delivers_each_matching_record_once() {
    let mut hub = Broker::start();
    let mut edge = Broker::start();
    let relay = Relay::start(hub.addr.parse().unwrap());
    edge.ok(&["topic", "create", "sensors", "--partitions", "2"]);
    edge.ok(&["plugin", "add", "--bundled", "json-filter"]);
    create_mirror(
        &edge,
        &hub,
        &relay.addr.to_string(),
        &["--filter", "json-filter:field=keep,op===,value=true"],
    );
    let mut produced = 0;
    let mut step = |edge: &Broker, n: usize| {
        let lines: Vec<String> = (produced..produced + n)
            .map(|i| format!("k{}:{{\"seq\":{i},\"keep\":{}}}", i % 5, i % 3 == 0))
            .collect();
        produce(edge, "sensors", &lines);
        produced += n;
    };
    step(&edge, 200);
    wait_caught_up(&edge, "m1", Duration::from_secs(15));
    relay.cut(true);
    step(&edge, 200);
    relay.cut(false);
    hub.restart();
    step(&edge, 200);
    relay.cut(true);
    step(&edge, 100);
    edge.restart();
    step(&edge, 100);
    relay.cut(false);
    wait_caught_up(&edge, "m1", Duration::from_secs(45));

    let parse = |broker: &Broker| -> Vec<serde_json::Value> {
        broker
            .ok(&[
                "consume", "sensors", "--from", "earliest", "--output", "json",
            ])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let mut expected: Vec<(u64, u64, String)> = parse(&edge)
        .iter()
        .filter(|r| r["value"].as_str().unwrap().contains("\"keep\":true"))
        .map(|r| {
            let (p, o) = (
                r["partition"].as_u64().unwrap(),
                r["offset"].as_u64().unwrap(),
            );
            (p, o, r["value"].as_str().unwrap().to_owned())
        })
        .collect();
    expected.sort();
    let mut got: Vec<(u64, u64, String)> = parse(&hub)
        .iter()
        .map(|r| {
            let header = |key: &str| -> u64 {
                r["headers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|h| h["key"] == key)
                    .unwrap_or_else(|| panic!("{key} missing on {r}"))["value"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            let source = header("edgebus-source-partition");
            assert_eq!(source, r["partition"].as_u64().unwrap(), "{r}");
            (
                source,
                header("edgebus-source-offset"),
                r["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(expected.len(), produced.div_ceil(3));
    assert_eq!(got, expected, "each matching record once, nothing else");
}

/// 5 % datagram loss with 50 ms delay each way: the mirror keeps up with
/// 1,000 records/s of 1 KiB (it has no lag left shortly after the producer
/// stops).
#[test]
fn mirror_over_a_lossy_slow_link_keeps_up_with_a_thousand_records_per_second() {
    let hub = Broker::start();
    let edge = Broker::start();
    let relay = Relay::start(hub.addr.parse().unwrap());
    relay.loss_per_mille.store(50, Ordering::Relaxed);
    relay.delay_ms.store(50, Ordering::Relaxed);
    edge.ok(&["topic", "create", "sensors", "--partitions", "2"]);
    create_mirror(
        &edge,
        &hub,
        &relay.addr.to_string(),
        &["--compression", "none"],
    );
    // 4 s at 1,000 records/s, in 100-record steps every 100 ms.
    let started = Instant::now();
    for step in 0..40 {
        produce(&edge, "sensors", &lines(step * 100, 100, 1000));
        let due = Duration::from_millis(100 * (step as u64 + 1));
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            thread::sleep(wait);
        }
    }
    wait_caught_up(&edge, "m1", Duration::from_secs(10));
    assert_eq!(records(&hub, "sensors"), records(&edge, "sensors"));
}

/// A long outage past `mirror.max_backlog_bytes` on a topic whose own
/// retention keeps little: retention keeps the undelivered records up to
/// the cap, drops the oldest past it and counts them, and the hub's copy
/// misses exactly those (the rest keep their offsets).
#[test]
fn mirror_backlog_past_its_cap_drops_the_oldest_and_counts_exactly_what_is_missing() {
    let hub = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("edge.toml");
    std::fs::write(
        &config,
        "retention_check_interval_ms = 100\n[mirror]\nmax_backlog_bytes = 60000\n",
    )
    .unwrap();
    let edge = Broker::start_with(&["--config", config.to_str().unwrap()]);
    edge.ok(&[
        "topic",
        "create",
        "sensors",
        "--partitions",
        "1",
        "--retention-bytes",
        "10000",
    ]);
    let relay = Relay::start(hub.addr.parse().unwrap());
    create_mirror(&edge, &hub, &relay.addr.to_string(), &[]);
    produce(&edge, "sensors", &lines(0, 20, 100));
    wait_caught_up(&edge, "m1", Duration::from_secs(15));

    relay.cut(true);
    // ~200 KB in 100 produce calls of ~2 KB: each is its own batch, so
    // retention can delete the oldest one by one.
    for step in 0..100 {
        produce(&edge, "sensors", &lines(20 + step * 10, 10, 180));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let dropped = loop {
        let m = mirror_json(&edge, "m1");
        let size: u64 = edge
            .ok(&["topic", "describe", "sensors", "--output", "json"])
            .parse::<serde_json::Value>()
            .ok()
            .and_then(|d| d["size_bytes"].as_u64())
            .unwrap_or(u64::MAX);
        if m["dropped_records"].as_u64().unwrap() > 0 && size <= 60_000 {
            break m["dropped_records"].as_u64().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "nothing dropped: {m}, size {size}"
        );
        thread::sleep(Duration::from_millis(100));
    };
    relay.cut(false);
    let m = wait_caught_up(&edge, "m1", Duration::from_secs(20));
    // While the link was down the count could only go by the hub's log end
    // as last heard (an append whose answer the cut lost may have landed);
    // once the hub skips the gap, it is exact.
    assert!(dropped > 0);
    let dropped = m["dropped_records"].as_u64().unwrap();
    assert!(dropped > 0, "{m}");
    let on_edge = records(&edge, "sensors");
    let on_hub = records(&hub, "sensors");
    let produced = 20 + 100 * 10;
    assert_eq!(
        on_hub.len() as u64,
        produced - dropped,
        "the hub misses exactly the dropped records"
    );
    // What the edge still has, the hub has at the same offsets.
    for record in &on_edge {
        assert!(on_hub.contains(record), "hub lacks {record}");
    }
    // The 20 delivered before the outage are all there.
    let first: Vec<&String> = on_hub.iter().filter(|r| r.starts_with("0 ")).collect();
    assert!(first.len() as u64 >= 20);
}

/// `--max-bytes-per-s`: over any 5 s window the link sends at most the cap
/// times 5 s plus one stored batch (a batch is never split), and it does
/// use the bandwidth it has.
#[test]
fn mirror_bandwidth_cap_holds_over_every_five_second_window() {
    let hub = Broker::start();
    let edge = Broker::start();
    edge.ok(&["topic", "create", "sensors", "--partitions", "1"]);
    // 20 batches of 15 records of ~1 KiB: about 300 KB.
    for step in 0..20 {
        produce(&edge, "sensors", &lines(step * 15, 15, 1000));
    }
    let cap: u64 = 50_000;
    let batch_max = 16_000;
    create_mirror(
        &edge,
        &hub,
        &hub.addr,
        &[
            "--compression",
            "none",
            "--max-bytes-per-s",
            &cap.to_string(),
        ],
    );
    let started = Instant::now();
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let total = loop {
        let m = mirror_json(&edge, "m1");
        let sent = m["bytes_sent"].as_u64().unwrap();
        samples.push((started.elapsed().as_secs_f64(), sent));
        if m["partitions"][0]["lag_records"] == 0 && m["state"] == "connected" {
            break sent;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{m}");
        thread::sleep(Duration::from_millis(200));
    };
    for (i, (t0, b0)) in samples.iter().enumerate() {
        for (t1, b1) in &samples[i + 1..] {
            if t1 - t0 <= 5.0 {
                assert!(
                    b1 - b0 <= cap * 5 + batch_max,
                    "{} bytes in {:.2} s under a cap of {cap} B/s",
                    b1 - b0,
                    t1 - t0
                );
            }
        }
    }
    let elapsed = samples.last().unwrap().0;
    assert!(
        total as f64 / elapsed >= cap as f64 * 0.6,
        "{total} bytes in {elapsed:.2} s: the link idles under its cap"
    );
}

/// A client CA and a certificate it signed for `name`: (CA, cert, key)
/// paths in `dir`.
fn client_identity(dir: &std::path::Path, name: &str) -> (String, String, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mirror test edge CA");
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let key = rcgen::KeyPair::generate().unwrap();
    let ca = params.self_signed(&key).unwrap();
    let issuer = rcgen::Issuer::new(params, &key);
    let (cert, cert_key) =
        edgebus::tls::issue(&issuer, &[name], rcgen::ExtendedKeyUsagePurpose::ClientAuth).unwrap();
    let path = |file: &str, text: &str| {
        let p = dir.join(file);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    (
        path("edge-ca.pem", &ca.pem()),
        path("edge.pem", &cert),
        path("edge.key", &cert_key),
    )
}

/// A hub that requires client certificates takes mirrors from two edges,
/// each presenting its certificate, into topics of their own; a mirror
/// without a certificate is refused at the handshake and backs off,
/// saying why.
#[test]
fn mirror_into_a_hub_requiring_mtls_takes_several_edges_with_certificates() {
    let certs = tempfile::tempdir().unwrap();
    let (client_ca, cert, key) = client_identity(certs.path(), "edge");
    let config = certs.path().join("hub.toml");
    std::fs::write(&config, format!("[tls]\nclient_ca = \"{client_ca}\"\n")).unwrap();
    let hub = Broker::start_with(&["--config", config.to_str().unwrap()]);
    let edges = [Broker::start(), Broker::start()];
    for (i, edge) in edges.iter().enumerate() {
        edge.ok(&["topic", "create", "sensors", "--partitions", "2"]);
        let to_topic = format!("site{i}");
        create_mirror(
            edge,
            &hub,
            &hub.addr,
            &["--to-topic", &to_topic, "--cert", &cert, "--key", &key],
        );
        produce(edge, "sensors", &lines(i * 1000, 100, 20));
    }
    let anonymous = Broker::start();
    anonymous.ok(&["topic", "create", "sensors", "--partitions", "1"]);
    create_mirror(&anonymous, &hub, &hub.addr, &["--to-topic", "nobody"]);
    for edge in &edges {
        wait_caught_up(edge, "m1", Duration::from_secs(15));
    }
    let hub_records = |topic: &str| -> usize {
        let out = hub
            .command(&["consume", topic, "--from", "earliest", "--output", "json"])
            .args(["--cert", &cert, "--key", &key])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().lines().count()
    };
    assert_eq!(hub_records("site0"), 100);
    assert_eq!(hub_records("site1"), 100);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = mirror_json(&anonymous, "m1");
        if m["state"] == "backing-off" && m["next_attempt_ms"].is_i64() {
            assert!(!m["detail"].as_str().unwrap().is_empty(), "{m}");
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// Pause holds the link (kept across an edge restart), resume delivers
/// what came meanwhile, delete forgets the mirror.
#[test]
fn mirror_pause_survives_a_restart_and_resume_delivers_the_backlog() {
    let hub = Broker::start();
    let mut edge = Broker::start();
    edge.ok(&["topic", "create", "sensors", "--partitions", "1"]);
    create_mirror(&edge, &hub, &hub.addr, &["--compression", "lz4"]);
    produce(&edge, "sensors", &lines(0, 50, 10));
    wait_caught_up(&edge, "m1", Duration::from_secs(15));
    edge.ok(&["mirror", "pause", "m1"]);
    produce(&edge, "sensors", &lines(50, 50, 10));
    edge.restart();
    let m = mirror_json(&edge, "m1");
    assert_eq!(m["state"], "paused", "{m}");
    assert_eq!(m["partitions"][0]["delivered"], 50, "{m}");
    assert_eq!(m["partitions"][0]["lag_records"], 50, "{m}");
    edge.ok(&["mirror", "resume", "m1"]);
    wait_caught_up(&edge, "m1", Duration::from_secs(15));
    assert_eq!(records(&hub, "sensors"), records(&edge, "sensors"));
    let list = edge.ok(&["mirror", "list"]);
    assert!(list.contains("m1"), "{list}");
    edge.ok(&["mirror", "delete", "m1"]);
    let gone = edge.run(&["mirror", "describe", "m1"]);
    assert_eq!(gone.status.code(), Some(4));
}

/// The hub's side in process, request by request: a destination is created
/// on first contact and bound to its mirror; appends go at the log end only
/// (a resend is refused with the log end, not appended twice); skips move
/// the log end; every other writer and every other mirror gets a typed
/// error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_appends_a_mirror_only_at_its_log_end_and_refuses_everyone_else() {
    use edgebus_client::{Client, ClientConfig, ClientError};
    use edgebus_proto::ErrorCode;
    use edgebus_proto::batch::{self, BatchBuilder, ProducerStamp, Record};
    use edgebus_proto::compression::Compression;
    use edgebus_proto::frame::{Request, Response};

    let dir = tempfile::tempdir().unwrap();
    let config = edgebus::config::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("hub"),
        ..Default::default()
    };
    let hub = edgebus::start(config.clone()).await.unwrap();
    let client = Client::connect(ClientConfig::new(hub.addr, config.local_ca_path()))
        .await
        .unwrap();
    let code = |r: Result<Response, ClientError>| match r {
        Err(e) => e.code(),
        Ok(ok) => panic!("expected an error, got {ok:?}"),
    };
    let stored_batch = |base: u64, n: u32| {
        let mut b = BatchBuilder::new();
        for i in 0..n {
            b.push(&Record::new(format!("v{}", base + u64::from(i)), 1));
        }
        let mut bytes = bytes::BytesMut::from(&b.finish(ProducerStamp::NONE)[..]);
        batch::set_base_offset(&mut bytes, base);
        bytes.freeze()
    };
    let open = |mirror: &str, partitions: u32| Request::MirrorOpen {
        mirror: mirror.into(),
        topic: "dst".into(),
        partitions,
        filtered: false,
    };
    let append_as =
        |mirror: &str, base: u64, compression, payload: bytes::Bytes| Request::MirrorAppend {
            mirror: mirror.into(),
            topic: "dst".into(),
            partition: 1,
            base_offset: base,
            compression,
            payload,
        };
    let append = |base, payload| append_as("m@1", base, Compression::None, payload);

    assert_eq!(
        client.request(&open("m@1", 2)).await.unwrap(),
        Response::MirrorPositions(vec![0, 0])
    );
    let first = [stored_batch(0, 3), stored_batch(3, 2)].concat();
    assert_eq!(
        client
            .request(&append(0, first.clone().into()))
            .await
            .unwrap(),
        Response::Offset { offset: 5 }
    );
    // A resend after a lost answer: refused with the log end, not stored.
    assert_eq!(
        code(client.request(&append(0, first.into())).await),
        Some(ErrorCode::MirrorOffsetMismatch)
    );
    // A batch whose own base offset is not where it would go.
    assert_eq!(
        code(client.request(&append(5, stored_batch(9, 1))).await),
        Some(ErrorCode::CorruptBatch)
    );
    // Compressed payloads are the same batches.
    let zstd =
        edgebus_proto::compression::compress(Compression::Zstd, &stored_batch(5, 4)).unwrap();
    let compressed = append_as("m@1", 5, Compression::Zstd, zstd.into());
    assert_eq!(
        client.request(&compressed).await.unwrap(),
        Response::Offset { offset: 9 }
    );
    let skip = |from, to| Request::MirrorSkip {
        mirror: "m@1".into(),
        topic: "dst".into(),
        partition: 1,
        from,
        to,
    };
    assert_eq!(
        code(client.request(&skip(3, 20)).await),
        Some(ErrorCode::MirrorOffsetMismatch)
    );
    assert_eq!(
        client.request(&skip(9, 20)).await.unwrap(),
        Response::Offset { offset: 20 }
    );
    assert_eq!(
        client
            .request(&append(20, stored_batch(20, 1)))
            .await
            .unwrap(),
        Response::Offset { offset: 21 }
    );
    assert_eq!(
        client.request(&open("m@1", 2)).await.unwrap(),
        Response::MirrorPositions(vec![0, 21])
    );

    // Nobody else writes the destination.
    let produce = Request::Produce {
        topic: "dst".into(),
        partition: 0,
        acks: edgebus_proto::frame::Acks::Durable,
        batch: stored_batch(0, 1),
    };
    assert_eq!(
        code(client.request(&produce).await),
        Some(ErrorCode::MirrorDestination)
    );
    assert_eq!(
        code(client.request(&open("other@2", 2)).await),
        Some(ErrorCode::MirrorConflict)
    );
    assert_eq!(
        code(client.request(&open("m@1", 3)).await),
        Some(ErrorCode::MirrorConflict)
    );
    let other_append = append_as("other@2", 21, Compression::None, stored_batch(21, 1));
    assert_eq!(
        code(client.request(&other_append).await),
        Some(ErrorCode::MirrorConflict)
    );
    client
        .create_topic(edgebus_client::TopicSpec::new("plain", 1))
        .await
        .unwrap();
    let plain = Request::MirrorOpen {
        mirror: "m@1".into(),
        topic: "plain".into(),
        partitions: 1,
        filtered: false,
    };
    assert_eq!(
        code(client.request(&plain).await),
        Some(ErrorCode::MirrorConflict)
    );
    drop(client);
    hub.shutdown().await;
}
