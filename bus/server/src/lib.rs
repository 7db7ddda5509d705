//! # edgebus
//!
//! The broker: a thin IO shell around the storage seam. It owns the QUIC
//! endpoint, the single group-commit writer, retention, consumer groups,
//! plugin attach points and configuration. The `edgebus` command line is
//! the binary target of this package, a client of this library.
//!
//! ```text
//!            QUIC (quinn + rustls, ALPN edgebus/1)
//!  clients ─────────▶ server ──▶ cmd (dispatch, produce) ──▶ writer thread ──▶ LogStore (redb)
//!                       │                                    partition engines       │
//!                       │                                 (edgebus-core) │ high      │
//!                       └──▶ feed (subscriptions) ◀── notifier ◀─────────┤ watermark │
//!                                  ▲                                     ▼           │
//!                                  └─────────── reader (read txns, bounded by it) ◀──┘
//! ```
//!
//! ## Crates
//!
//! ```text
//!  edgebus (bin: cli) ──▶ edgebus-client ──▶ edgebus-proto
//!        │  └─────────────────────────────────▶ edgebus-proto
//!        ▼
//!  edgebus (lib) ──▶ edgebus-core ──▶ edgebus-proto
//!        ├────────▶ edgebus-store ─▶ edgebus-proto
//!        ├────────▶ edgebus-wasm
//!        └────────▶ edgebus-proto
//! ```
//!
//! The library never uses the client SDK: what both sides need (framing,
//! the key partitioner, size defaults, ALPN, local paths) is in
//! `edgebus-proto`, and each side keeps its own few lines of QUIC and TLS.
//!
//! ## Layout
//!
//! The shell, top down (no module imports one above it):
//!
//! - [`server`]: endpoint, connections, streams; hands each request to
//!   [`cmd`], produce acks to [`cmd::produce`], subscriptions to [`feed`].
//! - [`cmd`]: one handler per request family (topic, produce, fetch,
//!   group, plugin, pipeline, node), each given the few handles it touches;
//!   `dispatch` turns their errors into `Response::Error`.
//! - [`mqtt`]: the MQTT 3.1.1/5 front door: devices publish into mapped
//!   topics through [`cmd::produce`] and subscribe through their own feeds.
//! - [`exporter`]: the metrics endpoint, `/metrics` and `/healthz`,
//!   reading the broker's state at scrape time.
//! - [`kafka`]: the Kafka wire-protocol front door (TCP/TLS), over the
//!   same produce path, reader, topics and group offsets as QUIC.
//! - [`broker`]: the handles to every part, made once at start.
//! - [`feed`]: subscriptions: pushes batches as partitions grow, through a
//!   read-path plugin chain if asked.
//! - [`pipelines`]: exactly-once pipelines between topics.
//! - [`mirror`]: edge-to-hub mirrors: a link task per mirror that delivers
//!   stored batches to a hub, which appends them at its log end only.
//! - [`wire`]: frames on QUIC streams (read with the size check, write).
//! - [`attach`]: each topic's ingest chain and read-path counters.
//! - [`plugin_state`]: plugin state kept in the store, per attachment and
//!   stage; ingest chains' state persisted through the writer.
//! - [`dlq`]: dead-letter topics, created on first use.
//! - [`chain`]: the one chain runner every attach point uses: hot swap,
//!   failure policy, dead letters, counters.
//! - [`registry`]: the plugin registry and its compiled plugins.
//! - [`topics`]: the topic catalog and its cache.
//! - [`reader`]: partition reads off the async workers.
//! - [`groups`]: consumer groups: coordinator timer, held heartbeats,
//!   commits.
//! - [`retention`]: the background retention task.
//! - `memory`: hands the heap a load freed back to the system when
//!   traffic stops (Linux with glibc).
//! - [`error`]: how a domain error becomes a client's error code.
//! - [`writer`]: the single writer: drives the partition engines, group
//!   commit, acks by level, high watermarks.
//! - [`saved`]: the stored form of ingest chains and pipeline definitions.
//! - [`notify`]: wakes subscriptions when partitions grow.
//! - [`metrics`]: counters and histograms, updated where events happen.
//! - [`tls`], [`config`]: local CA on first start, operator certificates,
//!   mTLS; TOML configuration and limits.
//! - [`bundled`]: the plugins embedded in the binary, and `plugins/` built
//!   on demand for tests.
#![warn(missing_docs)]

pub mod attach;
pub mod broker;
pub mod bundled;
pub mod chain;
pub mod cluster;
pub mod cmd;
pub mod config;
pub mod dlq;
pub mod error;
pub mod exporter;
pub mod feed;
pub mod groups;
pub mod kafka;
mod low_priority;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod memory;
pub mod metrics;
pub mod mirror;
pub mod mqtt;
pub mod notify;
pub mod pipelines;
pub mod plugin_state;
pub mod reader;
pub mod registry;
pub mod retention;
pub mod saved;
pub mod server;
pub mod tls;
pub mod topics;
pub mod wire;
pub mod writer;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use edgebus_store::{LogStore, RedbStore};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::config::Config;

/// Why a broker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The data directory could not be created.
    #[error("data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] edgebus_store::StoreError),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The plugin engine could not start, or stored plugin config is unreadable.
    #[error("plugins: {0}")]
    Plugins(String),
    /// The metrics endpoint could not listen.
    #[error("metrics endpoint on {addr}: {source}")]
    Metrics {
        /// Listen address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The MQTT front door could not open.
    #[error(transparent)]
    Mqtt(#[from] mqtt::DoorError),
    /// The Kafka listener could not listen.
    #[error("kafka listener on {addr}: {source}")]
    Kafka {
        /// Listen address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The QUIC endpoint could not be set up.
    #[error("QUIC endpoint on {addr}: {detail}")]
    Endpoint {
        /// Listen address.
        addr: SocketAddr,
        /// Why.
        detail: String,
    },
    /// The node could not join its cluster.
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
}

/// A broker running on the current tokio runtime.
pub struct RunningBroker {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The CA clients should trust, when the broker made its own.
    pub local_ca: Option<PathBuf>,
    /// True when this start created the local CA.
    pub created_ca: bool,
    /// The bound address of the metrics endpoint, when it is on.
    pub metrics_addr: Option<SocketAddr>,
    /// The bound address of the MQTT listener, when it is on.
    pub mqtt_addr: Option<SocketAddr>,
    /// The bound address of the MQTT-over-TLS listener, when it is on.
    pub mqtt_tls_addr: Option<SocketAddr>,
    mqtt: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    /// The bound address of the Kafka listener, when it is on.
    pub kafka_addr: Option<SocketAddr>,
    /// On a cluster node, the cluster CA its certificate comes from, which
    /// clients trust.
    pub cluster_ca: Option<PathBuf>,
    cluster: Option<cluster::Cluster>,
    shutdown: Option<oneshot::Sender<()>>,
    exporter: Option<JoinHandle<()>>,
    kafka: Option<JoinHandle<()>>,
    task: JoinHandle<()>,
    retention: JoinHandle<()>,
    group_timer: JoinHandle<()>,
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    trimmer: JoinHandle<()>,
    pipelines: pipelines::Pipelines,
    mirrors: mirror::Mirrors,
    store: Arc<dyn LogStore>,
}

impl RunningBroker {
    /// Stops accepting, closes connections and waits for the endpoint.
    pub async fn shutdown(mut self) {
        if let Some((tx, task)) = self.mqtt.take() {
            let _ = tx.send(());
            let _ = task.await;
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // The exporter holds the broker's handles, the store among them.
        let mut exporter = self.exporter.take();
        let mut kafka = self.kafka.take();
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        self.trimmer.abort();
        for task in [&mut self.retention, &mut self.group_timer]
            .into_iter()
            .chain(exporter.as_mut())
            .chain(kafka.as_mut())
        {
            task.abort();
            let _ = task.await;
        }
        self.pipelines.stop_all().await;
        self.mirrors.stop_all().await;
        drop(self.mirrors);
        if let Some(cluster) = self.cluster.take() {
            cluster.shutdown().await;
        }
        // The handle holds the store and the writer too: let go of them.
        drop(self.pipelines);
        let _ = (&mut self.task).await;
        // Stream tasks and the writer thread let go of the store shortly
        // after the endpoint is idle. Waiting until this handle holds the
        // last reference, then dropping it here, closes the database before
        // `shutdown` returns, so the same data dir can be opened again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&self.store) > 1 {
            if tokio::time::Instant::now() > deadline {
                tracing::warn!("store still in use 10 s after shutdown");
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let store = self.store;
        let _ = tokio::task::spawn_blocking(move || drop(store)).await;
    }

    /// Waits until the broker stops by itself (it does not, unless the
    /// endpoint fails).
    pub async fn wait(&mut self) {
        let _ = (&mut self.task).await;
    }
}

/// Opens `data_dir/edgebus.redb` and starts a broker on it.
pub async fn start(config: Config) -> Result<RunningBroker, StartError> {
    ensure_data_dir(&config)?;
    let path = config.data_dir.join("edgebus.redb");
    let cache_bytes = config.storage.cache_bytes;
    let store = tokio::task::spawn_blocking(move || RedbStore::open_with_cache(&path, cache_bytes))
        .await
        .map_err(|e| edgebus_store::StoreError::Backend(e.to_string()))??;
    start_with_store(config, Arc::new(store)).await
}

/// Starts a broker on any [`LogStore`].
pub async fn start_with_store(
    config: Config,
    store: Arc<dyn LogStore>,
) -> Result<RunningBroker, StartError> {
    let started = std::time::Instant::now();
    ensure_data_dir(&config)?;
    let setup = cluster_setup(&config, &*store)?;
    let files = match &setup {
        Some(setup) => setup.files.clone(),
        None => tls::resolve(&config)?,
    };
    let cluster_ca = setup.as_ref().map(|s| s.ca.clone());
    let tls = tls::server_config(
        &files,
        config.tls.client_ca.as_deref(),
        cluster_ca.as_deref(),
    )?;
    let endpoint_err = |detail: String| StartError::Endpoint {
        addr: config.listen,
        detail,
    };
    // Kafka clients are no peers: client certificates from tls.client_ca
    // only, and none of the peer protocol's ALPN.
    let tls_for_kafka = tls::server_config(&files, config.tls.client_ca.as_deref(), None)?;
    let quic = server::quic_config(tls, &config.limits).map_err(endpoint_err)?;
    let reset_key = tls::stateless_reset_key(&config.data_dir)?;
    let cid_key = tls::connection_id_key(&reset_key);
    let mut endpoint_config = quinn::EndpointConfig::new(reset_key);
    endpoint_config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    let socket =
        std::net::UdpSocket::bind(config.listen).map_err(|e| endpoint_err(e.to_string()))?;
    let runtime =
        quinn::default_runtime().ok_or_else(|| endpoint_err("no tokio runtime".into()))?;
    let endpoint = quinn::Endpoint::new(endpoint_config, Some(quic), socket, runtime)
        .map_err(|e| endpoint_err(e.to_string()))?;
    let addr = endpoint
        .local_addr()
        .map_err(|e| endpoint_err(e.to_string()))?;
    let (metrics_listener, metrics_addr) = match config.metrics.listen {
        Some(addr) => {
            let err = |source| StartError::Metrics { addr, source };
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
            let bound = listener.local_addr().map_err(err)?;
            (Some(listener), Some(bound))
        }
        None => (None, None),
    };
    let (kafka_listener, kafka_addr) = match config.kafka.listen {
        Some(addr) => {
            let err = |source| StartError::Kafka { addr, source };
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
            let bound = listener.local_addr().map_err(err)?;
            (Some(listener), Some(bound))
        }
        None => (None, None),
    };
    let engine = edgebus_wasm::Engine::new(edgebus_wasm::EngineConfig {
        cache_dir: Some(
            config
                .plugins
                .cache_dir
                .clone()
                .unwrap_or_else(|| config.data_dir.join("plugin-cache")),
        ),
        deadline: Duration::from_millis(config.plugins.deadline_ms),
        memory_max_bytes: config.plugins.memory_max_bytes,
        max_instances: config.plugins.max_instances,
        budgets: config.plugins.budgets(),
    })
    .map_err(|e| StartError::Plugins(e.to_string()))?;
    let registry = Arc::new(registry::Registry::new(engine, store.clone()));
    let attachments = attach::Attachments::restore(registry.clone(), store.clone())
        .map_err(|e| StartError::Plugins(e.to_string()))?;
    let node = cmd::node::NodeFacts {
        started,
        listeners: std::iter::once(("quic", addr))
            .chain(kafka_addr.map(|a| ("kafka", a)))
            .map(|(protocol, addr)| edgebus_proto::frame::Listener {
                protocol: protocol.into(),
                addr: addr.to_string(),
            })
            .collect(),
        data_dir: std::path::absolute(&config.data_dir).unwrap_or(config.data_dir.clone()),
    };
    let mut broker = Broker::new(
        store.clone(),
        config.limits.clone(),
        registry,
        Arc::new(attachments),
        node,
        config.mirror.clone(),
    )?;
    if let Some(setup) = setup {
        let cluster = cluster::Cluster::start(setup, endpoint.clone()).await?;
        cluster
            .attach(
                broker.writer.clone(),
                store.clone(),
                broker.topics.clone(),
                config.limits.max_fetch_bytes,
                Duration::from_millis(config.cluster.replica_lag_time_max_ms),
                cluster::scrub::Scrub {
                    interval: Duration::from_millis(config.cluster.scrub_interval_ms),
                    bytes_per_second: config.cluster.scrub_bytes_per_second,
                },
            )
            .await;
        broker.groups.set_replicated(Arc::new(cluster.clone()));
        broker.dead_letters.set_route(Arc::new(cluster.clone()));
        cluster.replicate_plugins(cluster::LocalPlugins {
            registry: broker.registry.clone(),
            attachments: broker.attachments.clone(),
            pipelines: broker.pipelines.clone(),
            store: store.clone(),
            reader: broker.reader.clone(),
        });
        broker.cluster = Some(cluster);
    }
    broker.pipelines.restore();
    if let Err(e) = broker.mirrors.restore() {
        tracing::error!(error = %e, "stored mirrors could not be read; none started");
    }
    let pipelines = broker.pipelines.clone();
    let mirrors = broker.mirrors.clone();
    let cluster = broker.cluster.clone();
    let retention = tokio::spawn(retention::run(
        broker.writer.clone(),
        Arc::new(broker.mirrors.clone()),
        Duration::from_millis(config.retention_check_interval_ms.max(1)),
    ));
    let group_timer = tokio::spawn(broker.groups.clone().run_timer());
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    let trimmer = tokio::spawn(memory::trim_when_quiet(broker.metrics.clone()));
    let exporter = metrics_listener.map(|l| tokio::spawn(exporter::serve(l, broker.clone())));
    let (mqtt, mqtt_addr, mqtt_tls_addr) =
        if config.mqtt.listen.is_some() || config.mqtt.tls_listen.is_some() {
            // Client certificates from tls.client_ca only: a cluster node's
            // certificate is no MQTT identity.
            let tls = tls::server_config(&files, config.tls.client_ca.as_deref(), None)?;
            let listener = mqtt::bind(config.mqtt.clone(), tls, broker.clone()).await?;
            let (plain, secure) = (listener.addr, listener.tls_addr);
            let (tx, rx) = oneshot::channel::<()>();
            let task = tokio::spawn(mqtt::serve(listener, async move {
                let _ = rx.await;
            }));
            tracing::info!(?plain, ?secure, "MQTT listening");
            (Some((tx, task)), plain, secure)
        } else {
            (None, None, None)
        };
    if let (Some(cluster), Some(bound)) = (&broker.cluster, kafka_addr) {
        // Kafka clients are sent to partition leaders and group
        // coordinators by these addresses (a wildcard listen address needs
        // `kafka.advertised`).
        let address = config.kafka.advertised.clone();
        cluster.advertise_kafka(address.unwrap_or_else(|| bound.to_string()));
    }
    let kafka = kafka_listener.zip(kafka_addr).map(|(listener, bound)| {
        let tls = kafka::listener::acceptor(bound, &config.kafka, &tls_for_kafka);
        let groups = kafka::group::ClassicGroups::new(Duration::from_millis(
            config.kafka.initial_rebalance_delay_ms,
        ));
        let members = groups.clone();
        broker
            .groups
            .set_other_door(move |group| members.has_members(group));
        let door = kafka::listener::Door {
            broker: broker.clone(),
            groups,
            config: config.kafka.clone(),
        };
        tokio::spawn(kafka::listener::run(listener, tls, Arc::new(door)))
    });
    // Up from here, before `start` returns and the banner says so: the
    // endpoint is bound, and quinn holds new connections until the accept
    // loop takes them.
    broker.metrics.set_listening(true);
    let (shutdown, rx) = oneshot::channel();
    let task = tokio::spawn(server::run(endpoint, broker, async move {
        let _ = rx.await;
    }));
    tracing::info!(%addr, "edgebus listening");
    Ok(RunningBroker {
        addr,
        local_ca: files.local_ca,
        created_ca: files.created,
        metrics_addr,
        mqtt_addr,
        mqtt_tls_addr,
        mqtt,
        kafka_addr,
        cluster_ca,
        cluster,
        shutdown: Some(shutdown),
        exporter,
        kafka,
        task,
        retention,
        group_timer,
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        trimmer,
        pipelines,
        mirrors,
        store,
    })
}

/// The cluster this node joins, from `config.cluster`: `None` without a
/// node id. Its certificate is issued from the cluster CA directory, or is
/// the operator's own.
fn cluster_setup(
    config: &Config,
    store: &dyn LogStore,
) -> Result<Option<cluster::Setup>, StartError> {
    let c = &config.cluster;
    let Some(node) = c.node_id else {
        return Ok(None);
    };
    let invalid = |detail: String| cluster::ClusterError::Config(detail);
    if let Some(id) = c.peers.keys().find(|id| **id > cmd::produce::MAX_NODE_ID) {
        return Err(invalid(format!(
            "node id {id} is above the largest, {}",
            cmd::produce::MAX_NODE_ID
        ))
        .into());
    }
    if !c.peers.contains_key(&node) {
        return Err(invalid(format!(
            "node {node} must be in the peer list (--peer {node}=ADDR), which names {:?}",
            c.peers.keys().collect::<Vec<_>>()
        ))
        .into());
    }
    let (files, ca) = match (&c.ca_dir, &c.cert, &c.key, &c.ca) {
        (Some(dir), None, None, None) => (
            tls::issue_node_cert(dir, &config.data_dir, node, config.listen)?,
            tls::cluster_ca_cert(dir),
        ),
        (None, Some(cert), Some(key), Some(ca)) => (
            tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                local_ca: None,
                created: false,
            },
            ca.clone(),
        ),
        _ => {
            return Err(invalid(
                "a cluster node needs either --cluster-ca DIR (from `edgebus tls init DIR`) \
                 or all of cluster.cert, cluster.key and cluster.ca"
                    .into(),
            )
            .into());
        }
    };
    let control_path = config.data_dir.join("control.redb");
    // A node whose control log is gone but whose partitions are not would
    // rejoin as an empty voter and could outvote the committed log; it must
    // be replaced, not restarted.
    if !control_path.exists() && !store.topics()?.is_empty() {
        return Err(invalid(format!(
            "{} holds partitions but no control log ({}): this node's control state \
             was lost; start it with an empty data dir to rejoin the cluster",
            config.data_dir.display(),
            control_path.display()
        ))
        .into());
    }
    Ok(Some(cluster::Setup {
        node,
        peers: c.peers.clone(),
        ca,
        files,
        control_path,
        session_timeout: Duration::from_millis(c.session_timeout_ms),
        pipeline_checkpoint: Duration::from_millis(c.pipeline_checkpoint_ms),
    }))
}

fn ensure_data_dir(config: &Config) -> Result<(), StartError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.clone(),
        source,
    })
}
