//! `edgebus mirror create | list | describe | pause | resume | delete`.
//!
//! `mirror create` has `--ca`, `--cert` and `--key` of its own (the hub's
//! CA and the edge's identity there), so it reaches the edge broker with
//! `--broker` and `--broker-ca` instead of the usual connection flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use edgebus_client::local::{default_data_dir, local_ca_path};
use edgebus_proto::compression::Compression;
use edgebus_proto::frame::{MirrorDescription, MirrorSpec, PluginRef, Request, Response};
use serde_json::json;

use super::connect::{ConnectArgs, parse_duration};
use super::plugin::{chain_text, parse_plugin_ref};
use super::table::{self, Table};
use super::{CommonArgs, Failure, Output, PolicyArg};

#[derive(Debug, Subcommand)]
#[command(after_help = "Examples:
  edgebus mirror create uplink --topic sensors --to hub.example:7171 --ca hub-ca.pem
  edgebus mirror describe uplink --output json")]
pub enum MirrorCommand {
    /// Forward a topic of this (edge) broker to a topic on a hub, keeping
    /// offsets; the edge dials the hub, and the link survives outages and
    /// restarts of either side.
    #[command(after_help = "Examples:
  edgebus mirror create uplink --topic sensors --to hub.example:7171 --ca hub-ca.pem
  edgebus mirror create uplink --topic sensors --to 10.0.0.5:7171 --to-topic site3-sensors \\
      --ca hub-ca.pem --cert edge.pem --key edge-key.pem --max-bytes-per-s 125000 --compression zstd")]
    Create(CreateArgs),
    /// List mirrors and their state.
    List(CommonArgs),
    /// A mirror's state, delivered offsets, lag and traffic.
    Describe(NamedArgs),
    /// Stop a mirror's link until resumed (kept across restarts).
    Pause(NamedArgs),
    /// Start a paused mirror's link again.
    Resume(NamedArgs),
    /// Stop and delete a mirror (the hub's copy stays).
    Delete(NamedArgs),
}

#[derive(Debug, Args)]
pub struct NamedArgs {
    /// Mirror name.
    name: String,
    #[command(flatten)]
    common: CommonArgs,
}

/// `--compression` choices on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LinkCompression {
    /// Zstandard (level 3).
    #[default]
    Zstd,
    /// LZ4 frames.
    Lz4,
    /// As stored.
    None,
}

impl From<LinkCompression> for Compression {
    fn from(c: LinkCompression) -> Self {
        match c {
            LinkCompression::Zstd => Compression::Zstd,
            LinkCompression::Lz4 => Compression::Lz4,
            LinkCompression::None => Compression::None,
        }
    }
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Mirror name.
    name: String,
    /// Source topic on this broker.
    #[arg(long)]
    topic: String,
    /// The hub, HOST:PORT.
    #[arg(long)]
    to: String,
    /// Destination topic on the hub [default: the source topic's name].
    #[arg(long)]
    to_topic: Option<String>,
    /// CA certificate (PEM) that signed the hub's certificate [default: the
    /// local CA of the default data dir].
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) to present to a hub that requires mTLS.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Bandwidth cap of the link in bytes per second (0: none).
    #[arg(long, default_value_t = 0)]
    max_bytes_per_s: u64,
    /// Compression of the link payload.
    #[arg(long, value_enum, default_value_t)]
    compression: LinkCompression,
    /// Plugin the edge runs on the records before sending, `NAME[:key=value,…]`;
    /// repeat for a chain. Offsets then cannot stay dense: each record
    /// carries its source partition and offset in headers.
    #[arg(long = "filter", value_parser = parse_plugin_ref)]
    filters: Vec<PluginRef>,
    /// What the link's chain does with records a plugin fails on.
    #[arg(long, value_enum, default_value_t)]
    on_failure: PolicyArg,
    /// This (edge) broker [default: 127.0.0.1:7171].
    #[arg(long, env = "EDGEBUS_BROKER", default_value = "127.0.0.1:7171")]
    broker: String,
    /// CA certificate (PEM) of this broker [default: the local CA of the
    /// default data dir].
    #[arg(long, env = "EDGEBUS_CA")]
    broker_ca: Option<PathBuf>,
    /// Give up when the broker does not answer within this long.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

fn read_pem(path: &Path) -> Result<bytes::Bytes, Failure> {
    std::fs::read(path)
        .map(bytes::Bytes::from)
        .map_err(|e| Failure::other(format!("reading {}: {e}", path.display())))
}

fn mirror_json(m: &MirrorDescription) -> serde_json::Value {
    let ratio = (m.bytes_sent > 0).then(|| m.batch_bytes_sent as f64 / m.bytes_sent as f64);
    json!({
        "name": m.name, "topic": m.topic, "to": m.to, "to_topic": m.to_topic,
        "compression": m.compression.name(), "max_bytes_per_s": m.max_bytes_per_s, "mtls": m.mtls,
        "filter": chain_text(&m.chain),
        "state": m.state, "detail": m.detail, "next_attempt_ms": m.next_attempt_ms,
        "partitions": m.partitions.iter().map(|p| json!({
            "partition": p.partition, "delivered": p.delivered, "log_end": p.log_end,
            "lag_records": p.lag_records, "lag_bytes": p.lag_bytes,
        })).collect::<Vec<_>>(),
        "bytes_sent": m.bytes_sent, "batch_bytes_sent": m.batch_bytes_sent,
        "compression_ratio": ratio, "records_sent": m.records_sent,
        "dropped_records": m.dropped_records, "dropped_bytes": m.dropped_bytes,
    })
}

fn state_text(m: &MirrorDescription) -> String {
    let mut s = m.state.clone();
    if let Some(at) = m.next_attempt_ms {
        let wait = at - edgebus::retention::now_ms();
        s.push_str(&format!(" (next attempt in {} ms)", wait.max(0)));
    }
    if !m.detail.is_empty() {
        s.push_str(&format!(": {}", m.detail));
    }
    s
}

fn describe(m: &MirrorDescription, output: Output) {
    if let o @ (Output::Json | Output::Yaml) = output {
        o.emit(&mirror_json(m));
        return;
    }
    let ratio = match m.bytes_sent {
        0 => "-".to_owned(),
        sent => format!("{:.2}", m.batch_bytes_sent as f64 / sent as f64),
    };
    print!(
        "{}",
        table::summary(&[
            ("name", m.name.clone()),
            ("from", m.topic.clone()),
            ("to", format!("{} topic {}", m.to, m.to_topic)),
            ("state", state_text(m)),
            ("compression", m.compression.name().to_owned()),
            (
                "filter",
                match m.chain.is_empty() {
                    true => "none (offsets kept)".to_owned(),
                    false => chain_text(&m.chain),
                }
            ),
            (
                "bandwidth cap",
                match m.max_bytes_per_s {
                    0 => "none".to_owned(),
                    n => format!("{n} B/s"),
                }
            ),
            ("bytes sent", m.bytes_sent.to_string()),
            ("compression ratio", ratio),
            ("records sent", m.records_sent.to_string()),
            (
                "dropped (backlog cap)",
                format!("{} records, {} bytes", m.dropped_records, m.dropped_bytes)
            ),
        ])
    );
    println!();
    let mut t = Table::new(&["PARTITION", "DELIVERED", "LOG-END", "LAG", "LAG-BYTES"]);
    for p in &m.partitions {
        t.row(vec![
            p.partition.to_string(),
            p.delivered.map_or("-".into(), |d| d.to_string()),
            p.log_end.to_string(),
            p.lag_records.to_string(),
            p.lag_bytes.to_string(),
        ]);
    }
    t.print();
}

fn list(mirrors: &[MirrorDescription], output: Output) {
    if let o @ (Output::Json | Output::Yaml) = output {
        for m in mirrors {
            o.emit(&mirror_json(m));
        }
        return;
    }
    let mut t = Table::new(&["NAME", "TOPIC", "TO", "TO-TOPIC", "STATE", "LAG"]);
    for m in mirrors {
        let lag: u64 = m.partitions.iter().map(|p| p.lag_records).sum();
        t.row(vec![
            m.name.clone(),
            m.topic.clone(),
            m.to.clone(),
            m.to_topic.clone(),
            state_text(m),
            lag.to_string(),
        ]);
    }
    t.print();
}

async fn mirrors(
    connect: &ConnectArgs,
    request: &Request,
) -> Result<Vec<MirrorDescription>, Failure> {
    let client = connect.connect().await?;
    match client.request(request).await? {
        Response::Mirrors(m) => Ok(m),
        other => Err(Failure::other(format!("unexpected response {other:?}"))),
    }
}

pub async fn run(cmd: MirrorCommand) -> Result<(), Failure> {
    match cmd {
        MirrorCommand::Create(a) => {
            let ca = match a.ca {
                Some(ca) => ca,
                None => {
                    let ca = local_ca_path(&default_data_dir());
                    eprintln!(
                        "note: the mirror trusts the local development CA at {} for the hub \
                         (pass --ca to choose another)",
                        ca.display()
                    );
                    ca
                }
            };
            let spec = MirrorSpec {
                to_topic: a.to_topic.unwrap_or_else(|| a.topic.clone()),
                name: a.name,
                topic: a.topic,
                to: a.to,
                ca_pem: read_pem(&ca)?,
                cert_pem: a
                    .cert
                    .as_deref()
                    .map(read_pem)
                    .transpose()?
                    .unwrap_or_default(),
                key_pem: a
                    .key
                    .as_deref()
                    .map(read_pem)
                    .transpose()?
                    .unwrap_or_default(),
                max_bytes_per_s: a.max_bytes_per_s,
                compression: a.compression.into(),
                chain: a.filters,
                on_failure: a.on_failure.into(),
            };
            let connect = ConnectArgs::for_broker(a.broker, a.broker_ca, a.connect_timeout);
            for m in mirrors(&connect, &Request::MirrorCreate(spec)).await? {
                match a.output {
                    Output::Text => println!("created mirror {} ({})", m.name, m.state),
                    o => o.emit(&mirror_json(&m)),
                }
            }
        }
        MirrorCommand::List(c) => list(&mirrors(&c.connect, &Request::MirrorList).await?, c.output),
        MirrorCommand::Describe(a) => {
            let request = Request::MirrorDescribe { name: a.name };
            for m in mirrors(&a.common.connect, &request).await? {
                describe(&m, a.common.output);
            }
        }
        MirrorCommand::Pause(a) => {
            let request = Request::MirrorPause { name: a.name };
            for m in mirrors(&a.common.connect, &request).await? {
                match a.common.output {
                    Output::Text => println!("paused mirror {}", m.name),
                    o => o.emit(&mirror_json(&m)),
                }
            }
        }
        MirrorCommand::Resume(a) => {
            let request = Request::MirrorResume { name: a.name };
            for m in mirrors(&a.common.connect, &request).await? {
                match a.common.output {
                    Output::Text => println!("resumed mirror {}", m.name),
                    o => o.emit(&mirror_json(&m)),
                }
            }
        }
        MirrorCommand::Delete(a) => {
            let client = a.common.connect.connect().await?;
            client
                .request(&Request::MirrorDelete {
                    name: a.name.clone(),
                })
                .await?;
            match a.common.output {
                Output::Text => println!("deleted mirror {}", a.name),
                o => o.emit(&json!({"deleted": a.name})),
            }
        }
    }
    Ok(())
}
