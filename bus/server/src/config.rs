//! Broker configuration: TOML on disk, CLI flags on top, sane defaults for
//! a laptop or an edge box with no file at all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use edgebus_proto::local::{DEFAULT_PORT, local_ca_path};
use serde::{Deserialize, Serialize};

/// Everything `edgebus serve` can be told.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// UDP address of the QUIC endpoint.
    pub listen: SocketAddr,
    /// Holds `edgebus.redb` and, unless `tls` says otherwise, `tls/`.
    pub data_dir: PathBuf,
    /// How often retention runs, in milliseconds.
    pub retention_check_interval_ms: u64,
    /// Resource limits.
    pub limits: Limits,
    /// Certificates.
    pub tls: TlsConfig,
    /// Sandbox limits of WebAssembly plugins.
    pub plugins: PluginLimits,
    /// The redb store.
    pub storage: StorageConfig,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// The MQTT front door.
    pub mqtt: crate::mqtt::config::MqttConfig,
    /// The Kafka front door.
    pub kafka: crate::kafka::KafkaConfig,
    /// Cluster membership; a node without `node_id` is a single node.
    pub cluster: ClusterConfig,
    /// Edge-to-hub mirror links.
    pub mirror: crate::mirror::MirrorConfig,
}

/// Membership of a cluster of nodes that replicate each other's partitions
/// and run the control log. Off unless `node_id` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id, one of `peers`.
    pub node_id: Option<u64>,
    /// Every node of the cluster, this one included: id and `host:port` of
    /// its QUIC listener (TOML: `[cluster.peers]` with `1 = "10.0.0.1:7171"`).
    pub peers: std::collections::BTreeMap<u64, String>,
    /// A directory made by `edgebus tls init`: the node issues its own
    /// certificate from it, and peers must present one from the same CA.
    pub ca_dir: Option<PathBuf>,
    /// The operator's own node certificate (server and client use), instead
    /// of `ca_dir`.
    pub cert: Option<PathBuf>,
    /// Its private key.
    pub key: Option<PathBuf>,
    /// The CA peers' certificates must chain to, with `cert` and `key`.
    pub ca: Option<PathBuf>,
    /// A node not heard from for this long is fenced: it leaves every
    /// in-sync set and the partitions it led elect new leaders.
    pub session_timeout_ms: u64,
    /// `replica.lag.time.max.ms`: a follower that has not caught up with its
    /// leader for this long leaves the in-sync set.
    pub replica_lag_time_max_ms: u64,
    /// From the end of one scrub pass (a read of every local copy that
    /// checks each batch's CRC) to the start of the next; the first pass
    /// starts within a minute of the node's start.
    pub scrub_interval_ms: u64,
    /// The scrub's read rate bound.
    pub scrub_bytes_per_second: u64,
    /// How often a pipeline's runner proposes its progress to the control
    /// log. A new runner resumes from there, or from its copy of the
    /// destination where that shows more; a longer interval costs fewer
    /// proposals and, with stateful plugins, more state lost in a
    /// takeover.
    pub pipeline_checkpoint_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: None,
            peers: Default::default(),
            ca_dir: None,
            cert: None,
            key: None,
            ca: None,
            session_timeout_ms: 6_000,
            replica_lag_time_max_ms: 10_000,
            scrub_interval_ms: 3_600_000,
            scrub_bytes_per_second: 32 << 20,
            pipeline_checkpoint_ms: 200,
        }
    }
}

/// How the redb store is opened.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// redb's page cache (`storage.cache_bytes`): what the store may hold
    /// in memory of the pages it read or wrote.
    pub cache_bytes: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            cache_bytes: edgebus_store::redb_store::DEFAULT_CACHE_BYTES,
        }
    }
}

/// The Prometheus endpoint: `GET /metrics` and `GET /healthz` over plain
/// HTTP. Off unless `listen` is set (for example `127.0.0.1:9464`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// TCP address of the endpoint.
    pub listen: Option<SocketAddr>,
}

/// Limits every plugin call and instance runs under.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginLimits {
    /// Wall-time deadline of one plugin call on one batch, in milliseconds.
    pub deadline_ms: u64,
    /// Linear memory one plugin instance may grow to.
    pub memory_max_bytes: usize,
    /// Plugin instances alive at once (the pooling allocator's size).
    pub max_instances: u32,
    /// Where compiled plugins are cached, by content hash (default:
    /// `data_dir/plugin-cache`). Holds native code loaded without
    /// re-validation: only the broker may write there.
    pub cache_dir: Option<PathBuf>,
    /// Bytes of keys and values all plugins of one attachment (an ingest
    /// chain, a subscription's chain, a pipeline) may keep in state.
    pub state_max_bytes: usize,
    /// Keys all plugins of one attachment may keep in state.
    pub state_max_keys: usize,
    /// A plugin may emit at most this many times the bytes of the batch it
    /// was given…
    pub output_bytes_ratio: usize,
    /// …but at least this many bytes…
    pub output_bytes_floor: usize,
    /// …and at most this many bytes per batch.
    pub output_max_bytes: usize,
    /// Records a plugin may emit per input record.
    pub output_records_per_input: usize,
    /// Headers one output record may have.
    pub output_max_headers: usize,
    /// Log lines per second one attachment's plugins may write to the
    /// broker's log (bursts of five seconds' worth).
    pub log_lines_per_second: u32,
    /// Log bytes per second one attachment's plugins may write.
    pub log_bytes_per_second: usize,
    /// Milliseconds per second one attachment's failing calls may take
    /// (bursts of five seconds' worth); past it its batches fail without
    /// a call until the budget refills. 0 sets no limit.
    pub failing_ms_per_second: u32,
}

impl Default for PluginLimits {
    fn default() -> Self {
        let budgets = edgebus_wasm::Budgets::default();
        PluginLimits {
            deadline_ms: 50,
            memory_max_bytes: 64 << 20,
            max_instances: 256,
            cache_dir: None,
            state_max_bytes: budgets.state_max_bytes,
            state_max_keys: budgets.state_max_keys,
            output_bytes_ratio: budgets.output_bytes_ratio,
            output_bytes_floor: budgets.output_bytes_floor,
            output_max_bytes: budgets.output_max_bytes,
            output_records_per_input: budgets.output_records_per_input,
            output_max_headers: budgets.output_max_headers,
            log_lines_per_second: budgets.log_lines_per_second,
            log_bytes_per_second: budgets.log_bytes_per_second,
            failing_ms_per_second: budgets.failing_ms_per_second,
        }
    }
}

impl PluginLimits {
    /// The budgets every attachment's chain runs within.
    pub fn budgets(&self) -> edgebus_wasm::Budgets {
        edgebus_wasm::Budgets {
            state_max_bytes: self.state_max_bytes,
            state_max_keys: self.state_max_keys,
            output_bytes_ratio: self.output_bytes_ratio,
            output_bytes_floor: self.output_bytes_floor,
            output_max_bytes: self.output_max_bytes,
            output_records_per_input: self.output_records_per_input,
            output_max_headers: self.output_max_headers,
            log_lines_per_second: self.log_lines_per_second,
            log_bytes_per_second: self.log_bytes_per_second,
            failing_ms_per_second: self.failing_ms_per_second,
        }
    }
}

/// Every limit the broker enforces. A request over a limit gets a typed
/// error, never a panic.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest frame accepted on any stream.
    pub max_frame_bytes: u32,
    /// Default `max.message.bytes` of new topics.
    pub max_message_bytes: u32,
    /// Requests a connection may have outstanding at once.
    pub max_inflight_per_connection: usize,
    /// Concurrent client connections.
    pub max_connections: usize,
    /// Concurrent bidirectional streams per connection.
    pub max_streams_per_connection: u32,
    /// Bytes of batches committed in one write transaction.
    pub max_group_commit_bytes: usize,
    /// Largest fetch or subscription push, in bytes.
    pub max_fetch_bytes: u32,
    /// Close connections idle for this long, in milliseconds.
    pub idle_timeout_ms: u32,
}

/// TLS material. Without `cert` and `key`, the broker makes a local CA and
/// a certificate for localhost in `data_dir/tls`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the broker.
    pub cert: Option<PathBuf>,
    /// PEM private key of the broker.
    pub key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// The data directory of a broker started with no configuration: see
/// [`edgebus_proto::local::default_data_dir`].
pub fn default_data_dir() -> PathBuf {
    edgebus_proto::local::default_data_dir(|name| std::env::var_os(name))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            data_dir: default_data_dir(),
            retention_check_interval_ms: 10_000,
            limits: Limits::default(),
            tls: TlsConfig::default(),
            plugins: PluginLimits::default(),
            storage: StorageConfig::default(),
            metrics: MetricsConfig::default(),
            mqtt: crate::mqtt::config::MqttConfig::default(),
            kafka: crate::kafka::KafkaConfig::default(),
            cluster: ClusterConfig::default(),
            mirror: crate::mirror::MirrorConfig::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: edgebus_proto::limits::DEFAULT_MAX_FRAME_BYTES,
            max_message_bytes: 1 << 20,
            max_inflight_per_connection: 1024,
            max_connections: 1024,
            max_streams_per_connection: 1024,
            max_group_commit_bytes: 16 << 20,
            max_fetch_bytes: 4 << 20,
            idle_timeout_ms: 30_000,
        }
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid config TOML.
    #[error("parsing {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
}

impl Config {
    /// Reads a TOML config file; missing keys keep their defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Where the local CA certificate is (or will be) written.
    pub fn local_ca_path(&self) -> PathBuf {
        local_ca_path(&self.data_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_partial_toml_keeps_other_defaults() {
        let c: Config = toml::from_str("[limits]\nmax_connections = 3\n").unwrap();
        assert_eq!(c.limits.max_connections, 3);
        assert_eq!(c.limits.max_frame_bytes, Limits::default().max_frame_bytes);
        assert_eq!(c.listen.port(), DEFAULT_PORT);
    }

    #[test]
    fn config_plugin_budgets_from_toml() {
        let c: Config =
            toml::from_str("[plugins]\nstate_max_keys = 7\nlog_lines_per_second = 2\n").unwrap();
        let budgets = c.plugins.budgets();
        assert_eq!(
            (budgets.state_max_keys, budgets.log_lines_per_second),
            (7, 2)
        );
        assert_eq!(
            budgets.state_max_bytes,
            edgebus_wasm::Budgets::default().state_max_bytes
        );
    }

    #[test]
    fn config_metrics_off_by_default_and_set_from_toml() {
        assert_eq!(Config::default().metrics.listen, None);
        let c: Config = toml::from_str("[metrics]\nlisten = \"127.0.0.1:9464\"\n").unwrap();
        assert_eq!(
            c.metrics.listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9464)))
        );
        assert!(toml::from_str::<Config>("[metrics]\nlisten = \"nowhere\"\n").is_err());
    }

    #[test]
    fn config_unknown_key_is_rejected() {
        assert!(toml::from_str::<Config>("[limits]\nmax_conections = 3\n").is_err());
    }
}
