//! The Kafka front door: real Kafka clients (librdkafka, kcat,
//! kafka-python, the Java client) produce, fetch and run consumer groups
//! over TCP, or TLS off loopback, against the same log as the QUIC door.
//!
//! ```text
//!  TCP/TLS ──▶ listener (frames, limits, in-order replies)
//!                 │  kafka-protocol decodes requests, encodes responses
//!                 ▼
//!               api (versions, dispatch) ──▶ produce ──▶ cmd::produce (ingest chain, writer)
//!                                        ├─▶ fetch   ──▶ reader (stored batches as they are)
//!                                        ├─▶ admin   ──▶ topics (metadata, create, delete, configs)
//!                                        └─▶ group   ──▶ coordinator (classic join/sync)
//!                                                        + groups (the stored offsets)
//! ```
//!
//! Stored batches are Kafka's RecordBatch v2 byte for byte, so a Produce
//! hands the client's batch to the same produce path the QUIC door uses
//! (ingest plugins run on it, idempotent producers share the partition
//! engine's dedup state), and a Fetch answers with the stored bytes.
//!
//! ## Layout
//!
//! - [`listener`]: accept loop, TLS, framing and the per-connection limits.
//! - [`api`]: the versions this door speaks, request dispatch, response
//!   framing, and the answer to anything it does not speak.
//! - [`produce`], [`fetch`], [`admin`], [`group`]: one file per family.
//! - [`coordinator`]: the classic consumer-group protocol (JoinGroup,
//!   SyncGroup, Heartbeat) as a state machine with time as an argument.
//! - [`error`]: edgebus errors as Kafka error codes.

pub mod admin;
pub mod api;
pub mod coordinator;
pub mod error;
pub mod fetch;
pub mod group;
pub mod listener;
pub mod produce;

use std::net::SocketAddr;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};

use crate::metrics::Labels;

/// The `[kafka]` section of the config. The door is off unless `listen` is
/// set (`127.0.0.1:9092` is the usual choice).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// TCP address of the Kafka listener: plain TCP on a loopback address,
    /// TLS with the broker's certificate (and client certificates checked
    /// against `tls.client_ca` when set) on any other.
    pub listen: Option<SocketAddr>,
    /// TLS on a loopback address too.
    pub tls_on_loopback: bool,
    /// `host:port` that Metadata and FindCoordinator tell clients to
    /// connect to; by default the address each client connected to.
    pub advertised: Option<String>,
    /// Largest request frame, in bytes; a longer one closes the
    /// connection (as Kafka's `socket.request.max.bytes` does).
    pub max_frame_bytes: u32,
    /// Requests one connection may have read and not yet answered; the
    /// next one is not read until an answer is written.
    pub max_inflight_per_connection: usize,
    /// Concurrent Kafka connections; more are closed at accept.
    pub max_connections: usize,
    /// Time a client may take to send the rest of a request (or finish
    /// its TLS handshake) once it has started, in milliseconds.
    pub request_read_timeout_ms: u64,
    /// Close a connection with no request for this long, in milliseconds
    /// (Kafka's `connections.max.idle.ms`).
    pub idle_timeout_ms: u64,
    /// How long a new consumer group waits for more members before its
    /// first assignment, in milliseconds (Kafka's
    /// `group.initial.rebalance.delay.ms`).
    pub initial_rebalance_delay_ms: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            listen: None,
            tls_on_loopback: false,
            advertised: None,
            max_frame_bytes: 16 << 20,
            max_inflight_per_connection: 32,
            max_connections: 1024,
            request_read_timeout_ms: 30_000,
            idle_timeout_ms: 600_000,
            initial_rebalance_delay_ms: 3_000,
        }
    }
}

/// Why the door refused a connection or a request, as the `reason` label
/// of `edgebus_kafka_refusals_total`.
#[derive(Debug, Clone, Copy)]
pub enum KafkaRefusal {
    /// `kafka.max_connections`, at accept.
    MaxConnections,
    /// `kafka.max_frame_bytes`: the connection is closed.
    MaxFrameBytes,
    /// A frame that does not decode as the request it says it is (or ends
    /// early): the connection is closed.
    Malformed,
    /// `kafka.request_read_timeout_ms` passed in the middle of a request
    /// or a TLS handshake: the connection is closed.
    ReadTimeout,
    /// An API key or version this door does not speak: answered with
    /// `UNSUPPORTED_VERSION`, the connection lives on.
    Unsupported,
    /// The TLS handshake failed.
    Handshake,
}

const REFUSAL_REASONS: [&str; 6] = [
    "max_connections",
    "max_frame_bytes",
    "malformed",
    "read_timeout",
    "unsupported",
    "handshake",
];

/// Counters of the Kafka door.
#[derive(Debug)]
pub struct KafkaMetrics {
    /// Connections open now.
    pub open: Gauge,
    /// Connections accepted since start.
    pub accepted: Counter,
    pub(crate) refusals: Family<Labels, Counter>,
    by_reason: [Counter; 6],
}

impl Default for KafkaMetrics {
    fn default() -> Self {
        let refusals: Family<Labels, Counter> = Family::default();
        let by_reason = REFUSAL_REASONS
            .map(|reason| refusals.get_or_create_owned(&vec![("reason", reason.to_owned())]));
        KafkaMetrics {
            open: Gauge::default(),
            accepted: Counter::default(),
            refusals,
            by_reason,
        }
    }
}

impl KafkaMetrics {
    /// Counts one refusal.
    pub fn refused(&self, reason: KafkaRefusal) {
        self.by_reason[reason as usize].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_config_off_by_default_and_read_from_toml() {
        let c = crate::config::Config::default();
        assert_eq!(c.kafka.listen, None);
        let c: crate::config::Config =
            toml::from_str("[kafka]\nlisten = \"127.0.0.1:9092\"\nmax_frame_bytes = 4096\n")
                .unwrap();
        assert_eq!(
            c.kafka.listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9092)))
        );
        assert_eq!(c.kafka.max_frame_bytes, 4096);
        assert_eq!(
            c.kafka.idle_timeout_ms,
            KafkaConfig::default().idle_timeout_ms
        );
        assert!(toml::from_str::<crate::config::Config>("[kafka]\nlisen = \"x\"\n").is_err());
    }
}
