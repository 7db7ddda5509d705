//! `edgebus topic create | list | describe | delete`.

use clap::{Args, Subcommand};
use edgebus_client::{AttachCounters, Client, Compression, FailurePolicy, PluginRef, TopicSpec};
use edgebus_proto::frame::{Request, Response};
use serde_json::json;

use super::plugin::{chain_text, parse_plugin_ref};
use super::{CommonArgs, Failure, Output, PolicyArg};

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create(CreateArgs),
    /// Change a topic's ingest plugin chain.
    Alter(AlterArgs),
    /// List topics.
    List(CommonArgs),
    /// Show a topic's settings and per-partition offsets.
    Describe(NamedArgs),
    /// Delete a topic and all its records.
    Delete(NamedArgs),
}

#[derive(Debug, Args)]
pub struct NamedArgs {
    /// Topic name.
    name: String,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Topic name.
    name: String,
    /// Number of partitions.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Delete batches older than this many ms (-1: keep forever).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    retention_ms: i64,
    /// Keep each partition under about this many bytes (-1: no limit).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    retention_bytes: i64,
    /// Largest record accepted (default: the broker's limits.max_message_bytes).
    #[arg(long)]
    max_message_bytes: Option<u32>,
    /// Codec the broker stores batches with: batches produced uncompressed
    /// are compressed with it before they are stored (none, lz4, zstd).
    #[arg(long, default_value = "none")]
    compression: Compression,
    #[command(flatten)]
    ingest: IngestArgs,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Plugin run on every produced batch before append,
    /// `NAME[:key=value,…]`; repeat for a chain, applied in order.
    #[arg(long = "ingest", value_parser = parse_plugin_ref)]
    ingest: Vec<PluginRef>,
    /// What to do with records an ingest plugin fails on.
    #[arg(long, value_enum, default_value_t)]
    on_failure: PolicyArg,
}

#[derive(Debug, Args)]
pub struct AlterArgs {
    /// Topic name.
    name: String,
    #[command(flatten)]
    ingest: IngestArgs,
    /// Remove the ingest chain.
    #[arg(long, conflicts_with = "ingest")]
    clear_ingest: bool,
    #[command(flatten)]
    common: CommonArgs,
}

async fn set_ingest(client: &Client, topic: &str, ingest: IngestArgs) -> Result<(), Failure> {
    client
        .request(&Request::SetIngest {
            topic: topic.to_owned(),
            chain: ingest.ingest,
            on_failure: FailurePolicy::from(ingest.on_failure),
        })
        .await?;
    Ok(())
}

fn spec_json(s: &TopicSpec) -> serde_json::Value {
    json!({
        "name": s.name,
        "partitions": s.partitions,
        "retention_ms": s.retention_ms,
        "retention_bytes": s.retention_bytes,
        "max_message_bytes": s.max_message_bytes,
        "compression": s.compression.name(),
    })
}

fn spec_text(s: &TopicSpec) -> String {
    let limit = |v: i64| {
        if v < 0 {
            "unlimited".to_string()
        } else {
            v.to_string()
        }
    };
    format!(
        "{}\tpartitions={}\tretention.ms={}\tretention.bytes={}\tmax.message.bytes={}\tcompression={}",
        s.name,
        s.partitions,
        limit(s.retention_ms),
        limit(s.retention_bytes),
        s.max_message_bytes,
        s.compression
    )
}

pub async fn run(cmd: TopicCommand) -> Result<(), Failure> {
    match cmd {
        TopicCommand::Create(a) => {
            let client = a.common.connect.connect().await?;
            let spec = TopicSpec {
                name: a.name.clone(),
                partitions: a.partitions,
                retention_ms: a.retention_ms,
                retention_bytes: a.retention_bytes,
                max_message_bytes: a.max_message_bytes.unwrap_or(0),
                compression: a.compression,
            };
            client.create_topic(spec).await?;
            if !a.ingest.ingest.is_empty() {
                set_ingest(&client, &a.name, a.ingest).await?;
            }
            match a.common.output {
                o @ (Output::Json | Output::Yaml) => o.emit(&json!({"created": a.name})),
                Output::Text => println!("created topic {}", a.name),
            }
        }
        TopicCommand::Alter(a) => {
            let client = a.common.connect.connect().await?;
            if !a.clear_ingest && a.ingest.ingest.is_empty() {
                return Err(Failure::new(2, "give --ingest PLUGIN… or --clear-ingest"));
            }
            set_ingest(&client, &a.name, a.ingest).await?;
            match a.common.output {
                o @ (Output::Json | Output::Yaml) => o.emit(&json!({"altered": a.name})),
                Output::Text => println!("altered topic {}", a.name),
            }
        }
        TopicCommand::List(a) => {
            let client = a.connect.connect().await?;
            for t in client.list_topics().await? {
                match a.output {
                    o @ (Output::Json | Output::Yaml) => o.emit(&spec_json(&t)),
                    Output::Text => println!("{}", spec_text(&t)),
                }
            }
        }
        TopicCommand::Describe(a) => {
            let client = a.common.connect.connect().await?;
            let (spec, partitions) = client.describe_topic(&a.name).await?;
            let plugins = client
                .request(&Request::TopicPlugins {
                    topic: a.name.clone(),
                })
                .await?;
            let Response::TopicPlugins {
                ingest,
                on_failure,
                ingest_counters: i,
                read_counters: r,
            } = plugins
            else {
                return Err(Failure::other(format!("unexpected response {plugins:?}")));
            };
            let counters = |c: &AttachCounters| json!({"in": c.records_in, "out": c.records_out, "filtered": c.filtered, "failed": c.failed, "dead_lettered": c.dead_lettered});
            match a.common.output {
                out @ (Output::Json | Output::Yaml) => {
                    let mut v = spec_json(&spec);
                    v["ingest"] = json!(chain_text(&ingest));
                    v["on_failure"] = json!(format!("{on_failure:?}").to_lowercase());
                    v["ingest_counters"] = counters(&i);
                    v["read_counters"] = counters(&r);
                    v["partition_offsets"] = partitions
                        .iter()
                        .map(|p| json!({"partition": p.partition, "log_start": p.log_start, "log_end": p.log_end}))
                        .collect();
                    out.emit(&v);
                }
                Output::Text => {
                    println!("{}", spec_text(&spec));
                    if !ingest.is_empty() {
                        println!(
                            "  ingest: {} (on failure: {on_failure:?})",
                            chain_text(&ingest)
                        );
                        println!(
                            "  ingest counters: in={} out={} filtered={} failed={} dead-lettered={}",
                            i.records_in, i.records_out, i.filtered, i.failed, i.dead_lettered
                        );
                    }
                    if r.records_in > 0 {
                        println!(
                            "  read-path counters: in={} out={} filtered={} failed={} dead-lettered={}",
                            r.records_in, r.records_out, r.filtered, r.failed, r.dead_lettered
                        );
                    }
                    for p in partitions {
                        println!(
                            "  partition {}\tlog_start={}\tlog_end={}",
                            p.partition, p.log_start, p.log_end
                        );
                    }
                }
            }
        }
        TopicCommand::Delete(a) => {
            let client = a.common.connect.connect().await?;
            client.delete_topic(&a.name).await?;
            match a.common.output {
                o @ (Output::Json | Output::Yaml) => o.emit(&json!({"deleted": a.name})),
                Output::Text => println!("deleted topic {}", a.name),
            }
        }
    }
    Ok(())
}
