//! `edgebus serve`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::Args;

use super::Failure;
use edgebus::config::{Config, default_data_dir};
use edgebus_client::local::{DEFAULT_PORT, local_ca_path};

/// Run a broker until Ctrl-C or SIGTERM.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  edgebus serve                                   # data in ~/.local/share/edgebus, 127.0.0.1:7171
  edgebus serve --data /var/lib/edgebus --listen 0.0.0.0:7171 --config edgebus.toml
  edgebus serve --metrics-listen 127.0.0.1:9464     # Prometheus: GET /metrics, GET /healthz
  edgebus serve --mqtt-listen 127.0.0.1:1883 --mqtt-map 'sensors/#=sensors'   # MQTT devices
  edgebus serve --kafka-listen 127.0.0.1:9092       # Kafka clients: kcat -b 127.0.0.1:9092 -L")]
pub struct ServeArgs {
    /// Data directory (default: $EDGEBUS_DATA or ~/.local/share/edgebus).
    #[arg(long)]
    data: Option<PathBuf>,
    /// UDP address to listen on (default 127.0.0.1:7171).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// TOML config file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Serve Prometheus metrics (GET /metrics) and readiness (GET /healthz)
    /// over plain HTTP on this TCP address (config: metrics.listen; off by
    /// default).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Accept MQTT 3.1.1 and 5.0 clients on this TCP address (config:
    /// mqtt.listen; off by default; 127.0.0.1:1883 is the usual one).
    #[arg(long, value_name = "ADDR")]
    mqtt_listen: Option<SocketAddr>,
    /// Store MQTT publishes matching FILTER in edgebus topic TOPIC (the
    /// MQTT topic becomes the key); `,retain` delivers the last record per
    /// MQTT topic on subscribe. Repeatable; added to config's mqtt.map.
    #[arg(long, value_name = "FILTER=TOPIC[,retain]")]
    mqtt_map: Vec<edgebus::mqtt::config::Mapping>,
    /// Serve Kafka clients on this TCP address, e.g. 127.0.0.1:9092
    /// (config: kafka.listen; off by default; plain TCP on loopback, TLS
    /// with the broker's certificate on any other address).
    #[arg(long, value_name = "ADDR")]
    kafka_listen: Option<SocketAddr>,
    /// This node's id in a cluster (config: cluster.node_id); needs
    /// --peer for every node and --cluster-ca.
    #[arg(long, value_name = "N", requires = "peer")]
    node_id: Option<u64>,
    /// A node of the cluster, this one included, as ID=HOST:PORT of its
    /// listener; repeat for each (config: [cluster.peers]).
    #[arg(long, value_name = "ID=ADDR", value_parser = parse_peer, requires = "node_id")]
    peer: Vec<(u64, String)>,
    /// Directory made by `edgebus tls init`: this node issues its
    /// certificate from that CA and peers must present one from it
    /// (config: cluster.ca_dir).
    #[arg(long, value_name = "DIR")]
    cluster_ca: Option<PathBuf>,
}

/// `ID=HOST:PORT`.
fn parse_peer(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not ID=HOST:PORT"))?;
    let id = id
        .parse()
        .map_err(|_| format!("{id:?} is not a node id (a number)"))?;
    if addr
        .rsplit_once(':')
        .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
    {
        return Err(format!("{addr:?} is not HOST:PORT"));
    }
    Ok((id, addr.to_owned()))
}

pub async fn run(args: ServeArgs) -> Result<(), Failure> {
    let mut config = match &args.config {
        Some(path) => Config::load(path).map_err(Failure::other)?,
        None => Config::default(),
    };
    if let Some(data) = args.data {
        config.data_dir = data;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(metrics) = args.metrics_listen {
        config.metrics.listen = Some(metrics);
    }
    if let Some(mqtt) = args.mqtt_listen {
        config.mqtt.listen = Some(mqtt);
    }
    config.mqtt.map.extend(args.mqtt_map);
    if let Some(kafka) = args.kafka_listen {
        config.kafka.listen = Some(kafka);
    }
    if let Some(node) = args.node_id {
        config.cluster.node_id = Some(node);
    }
    if !args.peer.is_empty() {
        config.cluster.peers = args.peer.into_iter().collect();
    }
    if let Some(dir) = args.cluster_ca {
        config.cluster.ca_dir = Some(dir);
    }
    // Relative paths are taken from the working directory at start (the
    // plugin compile cache refuses relative ones).
    config.data_dir = absolute(&config.data_dir);
    config.plugins.cache_dir = config.plugins.cache_dir.as_deref().map(absolute);
    let data_dir = config.data_dir.clone();
    let client_ca = config.tls.client_ca.clone();
    let operator_cert = config.tls.cert.clone();
    let kafka_tls_on_loopback = config.kafka.tls_on_loopback;
    let cluster_node = config.cluster.node_id;
    let cluster_peers: Vec<u64> = config.cluster.peers.keys().copied().collect();
    let broker = edgebus::start(config).await.map_err(Failure::other)?;
    println!(
        "edgebus listening on {} (QUIC, ALPN edgebus/1)",
        broker.addr
    );
    println!("data dir: {}", data_dir.display());
    if let Some(metrics) = broker.metrics_addr {
        println!("metrics: http://{metrics}/metrics (readiness: /healthz)");
    }
    if let Some(mqtt) = broker.mqtt_addr {
        println!("mqtt: listening on {mqtt} (MQTT 3.1.1 and 5.0 over TCP)");
    }
    if let Some(mqtt) = broker.mqtt_tls_addr {
        println!("mqtt: listening on {mqtt} (MQTT 3.1.1 and 5.0 over TLS)");
    }
    if let Some(kafka) = broker.kafka_addr {
        let transport = if kafka.ip().is_loopback() && !kafka_tls_on_loopback {
            "plain TCP on loopback"
        } else {
            "TLS"
        };
        println!("kafka: {kafka} ({transport})");
    }
    if let (Some(node), Some(ca)) = (cluster_node, &broker.cluster_ca) {
        println!(
            "cluster: node {node} of {:?}; peers and clients trust the cluster CA {}",
            cluster_peers,
            absolute(ca).display()
        );
    }
    match (&broker.local_ca, &operator_cert) {
        (Some(ca), _) => {
            let verb = if broker.created_ca {
                "created"
            } else {
                "using"
            };
            println!(
                "TLS: {verb} local development CA {} (it signed this broker's certificate for \
                 localhost, 127.0.0.1 and ::1)",
                absolute(ca).display()
            );
        }
        (None, Some(cert)) => println!(
            "TLS: serving {}; clients pass the CA that signed it with --ca",
            absolute(cert).display()
        ),
        (None, None) => {}
    }
    if let Some(ca) = &client_ca {
        println!(
            "mTLS: clients must present a certificate signed by {} (--cert/--key)",
            absolute(ca).display()
        );
    }
    let trusted_ca = broker.local_ca.as_deref().or(broker.cluster_ca.as_deref());
    for line in client_hint(broker.addr, trusted_ca) {
        println!("{line}");
    }
    wait_for_signal().await;
    println!("shutting down");
    broker.shutdown().await;
    Ok(())
}

/// What a client on this machine needs to reach this broker: nothing when
/// the defaults (`127.0.0.1:7171` and the CA of the default data dir, or
/// `$EDGEBUS_BROKER`/`$EDGEBUS_CA` as set here) fit, else the exact flags
/// and variables.
fn client_hint(addr: SocketAddr, local_ca: Option<&Path>) -> Vec<String> {
    let reach = reachable(addr);
    let default_broker = std::env::var("EDGEBUS_BROKER")
        .ok()
        .and_then(|b| b.parse::<SocketAddr>().ok())
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)));
    let default_ca = std::env::var_os("EDGEBUS_CA")
        .map(PathBuf::from)
        .unwrap_or_else(|| local_ca_path(&default_data_dir()));
    let mut flags = Vec::new();
    let mut vars = Vec::new();
    if reach != default_broker {
        flags.push(format!("--broker {reach}"));
        vars.push(format!("EDGEBUS_BROKER={reach}"));
    }
    let ca = local_ca.map(absolute);
    if let Some(ca) = &ca
        && *ca != absolute(&default_ca)
    {
        flags.push(format!("--ca {}", ca.display()));
        vars.push(format!("EDGEBUS_CA={}", ca.display()));
    }
    match (&ca, flags.is_empty()) {
        (Some(_), true) => {
            vec!["clients on this machine reach this broker and trust its CA by default".to_owned()]
        }
        (_, true) => Vec::new(),
        (_, false) => vec![
            format!(
                "clients: edgebus topic list {}   (or export {})",
                flags.join(" "),
                vars.join(" ")
            ),
            format!(
                "         or once for all commands: edgebus profile create NAME {}",
                flags.join(" ")
            ),
        ],
    }
}

/// The address a local client dials: a wildcard listener is reached on
/// loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
