//! The broker's counters and histograms, updated where their events
//! happen: with atomics and at most one map lookup per batch or commit,
//! never a lock per record. [`crate::exporter`] serves them, with what is
//! state (offsets, watermarks, lag, plugin counters the broker keeps
//! anyway) read at scrape time, so nothing is counted twice.
//!
//! ```text
//!  writer (commit_group) ──▶ Traffic (records, bytes in), WriterMetrics
//!  reader (read_at)      ──▶ Traffic (records, bytes out)
//!  server (accept loop)  ──▶ ConnectionMetrics, listener up
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use edgebus_proto::batch::BatchHeader;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// Every metric the broker keeps, shared by the parts that update them.
#[derive(Debug)]
pub struct Metrics {
    /// Records and bytes in and out, per partition.
    pub traffic: Traffic,
    /// Group commits.
    pub writer: WriterMetrics,
    /// QUIC connections and refusals.
    pub connections: ConnectionMetrics,
    /// Whether the QUIC accept loop runs.
    pub(crate) listening: AtomicBool,
    /// The Kafka door's connections and refusals.
    pub kafka: crate::kafka::KafkaMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            traffic: Traffic::default(),
            writer: WriterMetrics::new(),
            connections: ConnectionMetrics::new(),
            listening: AtomicBool::new(false),
            kafka: crate::kafka::KafkaMetrics::default(),
        }
    }
}

impl Metrics {
    /// Marks the QUIC listener up or down, for `/healthz`.
    pub fn set_listening(&self, up: bool) {
        self.listening.store(up, Ordering::Release);
    }
}

/// Records and bytes of one partition since start.
#[derive(Debug, Default)]
pub struct PartitionTraffic {
    pub(crate) records_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) records_out: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
}

/// Per-partition traffic counters.
#[derive(Debug, Default)]
pub struct Traffic {
    /// By topic, then partition index: looked up by `&str`, so counting
    /// allocates nothing once a partition has counters.
    topics: RwLock<HashMap<String, Vec<Arc<PartitionTraffic>>>>,
    /// Bytes appended and read in all, to tell a quiet broker from a busy
    /// one without walking the partitions.
    moved: AtomicU64,
}

/// Records and bytes of encoded batches (empty ones, which carry only
/// producer state, count nothing).
fn count(batches: &[Bytes]) -> (u64, u64) {
    batches.iter().fold((0, 0), |(records, bytes), batch| {
        let n = BatchHeader::parse(batch).map_or(0, |h| u64::from(h.record_count));
        (records + n, bytes + batch.len() as u64)
    })
}

impl Traffic {
    fn partition(&self, topic: &str, partition: u32) -> Arc<PartitionTraffic> {
        if let Some(p) = self.get(topic, partition) {
            return p;
        }
        let mut topics = self.topics.write().unwrap_or_else(|p| p.into_inner());
        let partitions = topics.entry(topic.to_owned()).or_default();
        let index = partition as usize;
        if partitions.len() <= index {
            partitions.resize_with(index + 1, Arc::default);
        }
        partitions[index].clone()
    }

    /// Counts batches appended to a partition.
    pub fn appended(&self, topic: &str, partition: u32, batches: &[Bytes]) {
        let (records, bytes) = count(batches);
        if records == 0 {
            return;
        }
        let p = self.partition(topic, partition);
        p.records_in.fetch_add(records, Ordering::Relaxed);
        p.bytes_in.fetch_add(bytes, Ordering::Relaxed);
        self.moved.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts batches read out of a partition.
    pub fn read(&self, topic: &str, partition: u32, batches: &[Bytes]) {
        let (records, bytes) = count(batches);
        if records == 0 {
            return;
        }
        let p = self.partition(topic, partition);
        p.records_out.fetch_add(records, Ordering::Relaxed);
        p.bytes_out.fetch_add(bytes, Ordering::Relaxed);
        self.moved.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes appended and read since start, over every partition.
    pub fn moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    /// Forgets a deleted topic, so one created again under its name starts
    /// from zero.
    pub fn remove_topic(&self, topic: &str) {
        self.topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic);
    }

    /// A partition's counters, if anything was counted.
    pub(crate) fn get(&self, topic: &str, partition: u32) -> Option<Arc<PartitionTraffic>> {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)?
            .get(partition as usize)
            .cloned()
    }
}

pub(crate) type Labels = Vec<(&'static str, String)>;

/// Group-commit histograms. The handles are made once, so a commit only
/// observes.
#[derive(Debug)]
pub struct WriterMetrics {
    pub(crate) commit_batches: Histogram,
    pub(crate) commit_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    durable: Histogram,
    not_durable: Histogram,
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 1.6 s: a lone fsync'd redb commit costs about 0.5 ms.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl WriterMetrics {
    fn new() -> Self {
        let commit_seconds: Family<Labels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let durable = commit_seconds.get_or_create_owned(&vec![("durable", "true".to_owned())]);
        let not_durable =
            commit_seconds.get_or_create_owned(&vec![("durable", "false".to_owned())]);
        WriterMetrics {
            // 1 to 4,096 batches per commit.
            commit_batches: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            commit_seconds,
            durable,
            not_durable,
        }
    }

    /// Records one group commit of `batches` batches.
    pub fn group_commit(&self, batches: usize, elapsed: Duration, durable: bool) {
        self.commit_batches.observe(batches as f64);
        self.commit(elapsed, durable);
    }

    /// Records one store commit (a group commit or a lone fsync).
    pub fn commit(&self, elapsed: Duration, durable: bool) {
        let histogram = if durable {
            &self.durable
        } else {
            &self.not_durable
        };
        histogram.observe(elapsed.as_secs_f64());
    }
}

/// A limit the server refuses connections or requests by.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    /// `max_connections`, at the handshake.
    MaxConnections,
    /// `max_inflight_per_connection`, per request.
    MaxInflight,
    /// `max_frame_bytes`, per frame.
    MaxFrameBytes,
}

/// QUIC connections and refusals.
#[derive(Debug)]
pub struct ConnectionMetrics {
    /// Connections open now.
    pub open: Gauge,
    /// Connections accepted since start.
    pub accepted: Counter,
    pub(crate) refusals: Family<Labels, Counter>,
    by_limit: [Counter; 3],
}

impl ConnectionMetrics {
    fn new() -> Self {
        let refusals: Family<Labels, Counter> = Family::default();
        let by_limit = [
            "max_connections",
            "max_inflight_per_connection",
            "max_frame_bytes",
        ]
        .map(|limit| refusals.get_or_create_owned(&vec![("limit", limit.to_owned())]));
        ConnectionMetrics {
            open: Gauge::default(),
            accepted: Counter::default(),
            refusals,
            by_limit,
        }
    }

    /// Counts one refusal.
    pub fn refused(&self, limit: Refusal) {
        self.by_limit[limit as usize].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgebus_proto::batch::Record;

    fn batch(records: usize) -> Bytes {
        let records = vec![Record::new(Bytes::from_static(b"abc"), 0); records];
        crate::chain::batches(&records, usize::MAX).remove(0)
    }

    #[test]
    fn traffic_counts_records_and_bytes_per_partition() {
        let t = Traffic::default();
        let (a, b) = (batch(3), batch(2));
        t.appended("t", 0, &[a.clone(), b.clone()]);
        t.read("t", 0, std::slice::from_ref(&a));
        t.appended("t", 1, &[Bytes::new()]);
        let p = t.get("t", 0).unwrap();
        assert_eq!(p.records_in.load(Ordering::Relaxed), 5);
        assert_eq!(
            p.bytes_in.load(Ordering::Relaxed),
            (a.len() + b.len()) as u64
        );
        assert_eq!(p.records_out.load(Ordering::Relaxed), 3);
        assert!(t.get("t", 1).is_none(), "empty batches count nothing");
        t.remove_topic("t");
        assert!(t.get("t", 0).is_none());
    }
}
