//! The metrics endpoint: `GET /metrics` in the Prometheus text format
//! (version 0.0.4) and `GET /healthz`, on a plain HTTP/1 listener
//! (`serve --metrics-listen`, config `metrics.listen`).
//!
//! ```text
//!  GET /metrics ──▶ counters of crate::metrics + State, a collector that
//!                   reads log start and end, high watermarks, group lag and
//!                   plugin counters from the broker's own handles
//!  GET /healthz ──▶ 200 when the store answers and the QUIC listener is
//!                   up, else 503
//! ```

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use edgebus_proto::frame::AttachCounters;
use edgebus_store::LogStore;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeCounterValue, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::broker::Broker;
use crate::chain::AttachPoint;
use crate::metrics::{Labels, Metrics, PartitionTraffic};

/// The content type of the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A plugin counter: name, help, and where it is in [`AttachCounters`].
type PluginCounter = (&'static str, &'static str, fn(&AttachCounters) -> u64);

/// The broker's state, read at each scrape.
#[derive(Clone)]
struct State {
    broker: Broker,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("State")
    }
}

fn gauge<'a>(
    encoder: &mut DescriptorEncoder<'a>,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn counter<'a, N: EncodeCounterValue + Copy>(
    encoder: &mut DescriptorEncoder<'a>,
    name: &str,
    help: &str,
    rows: &[(Labels, N)],
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// Rows of every per-partition metric.
#[derive(Default)]
struct PartitionRows {
    log_start: Vec<(Labels, u64)>,
    log_end: Vec<(Labels, u64)>,
    high_watermark: Vec<(Labels, u64)>,
    records_in: Vec<(Labels, u64)>,
    bytes_in: Vec<(Labels, u64)>,
    records_out: Vec<(Labels, u64)>,
    bytes_out: Vec<(Labels, u64)>,
}

impl State {
    fn partitions(&self) -> PartitionRows {
        let b = &self.broker;
        let mut rows = PartitionRows::default();
        let Ok(topics) = b.store.topics() else {
            return rows;
        };
        for spec in topics {
            for partition in 0..spec.partitions {
                let labels = vec![
                    ("topic", spec.name.clone()),
                    ("partition", partition.to_string()),
                ];
                if let Ok(o) = b.store.offsets(&spec.name, partition) {
                    rows.log_start.push((labels.clone(), o.log_start));
                    rows.log_end.push((labels.clone(), o.log_end));
                }
                let hw = b.writer.high_watermark(&spec.name, partition).unwrap_or(0);
                rows.high_watermark.push((labels.clone(), hw));
                let t = b.metrics.traffic.get(&spec.name, partition);
                let get = |f: fn(&PartitionTraffic) -> &AtomicU64| {
                    t.as_ref().map_or(0, |t| f(t).load(Ordering::Relaxed))
                };
                rows.records_in
                    .push((labels.clone(), get(|t| &t.records_in)));
                rows.bytes_in.push((labels.clone(), get(|t| &t.bytes_in)));
                rows.records_out
                    .push((labels.clone(), get(|t| &t.records_out)));
                rows.bytes_out.push((labels, get(|t| &t.bytes_out)));
            }
        }
        rows
    }

    /// Lag of every group with committed offsets: the high watermark less
    /// the committed offset, per partition.
    fn lag(&self) -> Vec<(Labels, u64)> {
        let b = &self.broker;
        let mut rows = Vec::new();
        for group in b.groups.committed_groups_blocking().unwrap_or_default() {
            for c in b.groups.committed_blocking(&group).unwrap_or_default() {
                let hw = b.writer.high_watermark(&c.topic, c.partition).unwrap_or(0);
                rows.push((
                    vec![
                        ("group", group.clone()),
                        ("topic", c.topic),
                        ("partition", c.partition.to_string()),
                    ],
                    hw.saturating_sub(c.offset),
                ));
            }
        }
        rows
    }

    /// Every attachment's counters, labelled by attach point and name (the
    /// topic, or the pipeline).
    fn attachments(&self) -> Vec<(Labels, AttachCounters)> {
        let b = &self.broker;
        let mut rows: Vec<(Labels, AttachCounters)> = b
            .attachments
            .counters()
            .into_iter()
            .map(|(topic, point, counters)| {
                (
                    vec![("attach_point", point.name().to_owned()), ("name", topic)],
                    counters,
                )
            })
            .collect();
        for p in b.pipelines.describe(None).unwrap_or_default() {
            rows.push((
                vec![
                    ("attach_point", AttachPoint::Pipeline.name().to_owned()),
                    ("name", p.name),
                ],
                p.counters,
            ));
        }
        rows
    }
}

impl Collector for State {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let p = self.partitions();
        let e = &mut encoder;
        gauge(
            e,
            "partition_log_start",
            "First offset kept in the partition",
            &p.log_start,
        )?;
        gauge(
            e,
            "partition_log_end",
            "Offset the next stored record gets",
            &p.log_end,
        )?;
        gauge(
            e,
            "partition_high_watermark",
            "Offset below which records are durable and readable",
            &p.high_watermark,
        )?;
        counter(e, "partition_records_in", "Records appended", &p.records_in)?;
        counter(
            e,
            "partition_bytes_in",
            "Bytes of batches appended",
            &p.bytes_in,
        )?;
        counter(
            e,
            "partition_records_out",
            "Records read by fetches, subscriptions and pipelines",
            &p.records_out,
        )?;
        counter(
            e,
            "partition_bytes_out",
            "Bytes of batches read by fetches, subscriptions and pipelines",
            &p.bytes_out,
        )?;
        gauge(
            e,
            "group_lag",
            "High watermark less the group's committed offset",
            &self.lag(),
        )?;
        let attached = self.attachments();
        let column = |f: fn(&AttachCounters) -> u64| -> Vec<(Labels, u64)> {
            attached.iter().map(|(l, c)| (l.clone(), f(c))).collect()
        };
        let plugin_counters: [PluginCounter; 10] = [
            ("plugin_records_in", "Records given to the chain", |c| {
                c.records_in
            }),
            ("plugin_records_out", "Records the chain emitted", |c| {
                c.records_out
            }),
            (
                "plugin_records_filtered",
                "Records the chain dropped",
                |c| c.filtered,
            ),
            ("plugin_failures", "Records a plugin failed on", |c| {
                c.failed
            }),
            (
                "plugin_dead_lettered",
                "Records sent to the dead-letter topic",
                |c| c.dead_lettered,
            ),
            (
                "plugin_budget_breaches",
                "Runs over a sandbox budget",
                |c| c.budget_breaches,
            ),
            (
                "plugin_log_lines",
                "Log lines the chain's plugins wrote",
                |c| c.log_lines,
            ),
            (
                "plugin_log_lines_dropped",
                "Log lines dropped over the log budget",
                |c| c.log_lines_dropped,
            ),
            ("plugin_calls", "Batches the chain was called on", |c| {
                c.calls
            }),
            (
                "plugin_instance_replacements",
                "Plugin instances replaced after a trap, deadline or memory cap",
                |c| c.instance_replacements,
            ),
        ];
        for (name, help, f) in plugin_counters {
            counter(e, name, help, &column(f))?;
        }
        let failing_cpu: Vec<(Labels, f64)> = attached
            .iter()
            .map(|(l, c)| {
                (
                    l.clone(),
                    Duration::from_micros(c.failing_cpu_us).as_secs_f64(),
                )
            })
            .collect();
        counter(
            e,
            "plugin_failing_cpu_seconds",
            "CPU time of plugin calls that failed, which the failing-time budget limits",
            &failing_cpu,
        )?;
        let plugin_gauges: [PluginCounter; 3] = [
            (
                "plugin_call_p50_microseconds",
                "Median wall time of one call on one batch",
                |c| c.call_p50_us,
            ),
            (
                "plugin_call_p99_microseconds",
                "99th percentile wall time of one call on one batch",
                |c| c.call_p99_us,
            ),
            (
                "plugin_state_bytes",
                "Bytes of keys and values the chain's plugins keep in state",
                |c| c.state_bytes,
            ),
        ];
        for (name, help, f) in plugin_gauges {
            gauge(e, name, help, &column(f))?;
        }
        Ok(())
    }
}

/// The registry a scrape encodes: the shared counters and the broker's
/// state.
fn registry(broker: &Broker) -> Registry {
    let mut registry = Registry::with_prefix("edgebus");
    let m = &broker.metrics;
    registry.register(
        "writer_commit_batches",
        "Batches per group commit",
        m.writer.commit_batches.clone(),
    );
    registry.register(
        "writer_commit_seconds",
        "Time of a store commit, fsync included when durable",
        m.writer.commit_seconds.clone(),
    );
    registry.register(
        "connections_open",
        "QUIC connections open",
        m.connections.open.clone(),
    );
    registry.register(
        "connections_accepted",
        "QUIC connections accepted",
        m.connections.accepted.clone(),
    );
    registry.register(
        "refusals",
        "Connections or requests refused, by limit",
        m.connections.refusals.clone(),
    );
    registry.register(
        "kafka_connections_open",
        "Kafka-door connections open",
        m.kafka.open.clone(),
    );
    registry.register(
        "kafka_connections_accepted",
        "Kafka-door connections accepted",
        m.kafka.accepted.clone(),
    );
    registry.register(
        "kafka_refusals",
        "Kafka-door connections closed or requests refused, by reason",
        m.kafka.refusals.clone(),
    );
    registry.register_collector(Box::new(State {
        broker: broker.clone(),
    }));
    registry
}

/// Serves `/metrics` and `/healthz` on `listener` until the task is
/// aborted; aborting it also ends the connections it serves.
pub async fn serve(listener: TcpListener, broker: Broker) {
    let registry = Arc::new(registry(&broker));
    let mut connections = JoinSet::new();
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, most likely: let some close
                    // rather than spin.
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next() => continue,
        };
        let (broker, registry) = (broker.clone(), registry.clone());
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                answer(request, broker.clone(), registry.clone())
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%remote, error = %e, "metrics connection failed");
            }
        });
    }
}

/// What `/healthz` answers: ready only when the store answers a read and
/// the QUIC listener is up. Reads the store: call it off the async workers.
fn health(store: &dyn LogStore, metrics: &Metrics) -> (StatusCode, &'static str) {
    if store.topics().is_err() {
        (StatusCode::SERVICE_UNAVAILABLE, "storage not open\n")
    } else if !metrics.listening.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "QUIC listener not up\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn answer(
    request: Request<Incoming>,
    broker: Broker,
    registry: Arc<Registry>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    if request.method() != Method::GET {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET\n".to_owned(),
        ));
    }
    Ok(match request.uri().path() {
        "/metrics" => {
            // The collector reads the store: off the async workers.
            let encoded = tokio::task::spawn_blocking(move || {
                let mut text = String::new();
                prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
                    .map(|()| text)
            })
            .await;
            match encoded {
                Ok(Ok(text)) => {
                    let mut response = reply(StatusCode::OK, text);
                    response.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
                    );
                    response
                }
                _ => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "encoding metrics failed\n".to_owned(),
                ),
            }
        }
        "/healthz" => {
            let (store, metrics) = (broker.store.clone(), broker.metrics.clone());
            let (status, body) = tokio::task::spawn_blocking(move || health(&*store, &metrics))
                .await
                .unwrap_or((StatusCode::SERVICE_UNAVAILABLE, "storage not open\n"));
            reply(status, body.to_owned())
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "not found: try /metrics or /healthz\n".to_owned(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_ready_only_once_the_listener_is_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = edgebus_store::RedbStore::open(&dir.path().join("edgebus.redb")).unwrap();
        let metrics = Metrics::default();
        assert_eq!(
            health(&store, &metrics),
            (StatusCode::SERVICE_UNAVAILABLE, "QUIC listener not up\n")
        );
        metrics.set_listening(true);
        assert_eq!(health(&store, &metrics), (StatusCode::OK, "ok\n"));
        metrics.set_listening(false);
        assert_eq!(health(&store, &metrics).0, StatusCode::SERVICE_UNAVAILABLE);
    }
}
