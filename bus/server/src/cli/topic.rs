//! `edgebus topic create | list | describe | delete`.

use clap::{Args, Subcommand};
use edgebus_client::TopicSpec;
use serde_json::json;

use super::{ConnectArgs, Failure, Output};

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create(CreateArgs),
    /// List topics.
    List(CommonArgs),
    /// Show a topic's settings and per-partition offsets.
    Describe(NamedArgs),
    /// Delete a topic and all its records.
    Delete(NamedArgs),
}

#[derive(Debug, Args)]
pub struct CommonArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    output: Output,
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
    #[command(flatten)]
    common: CommonArgs,
}

fn spec_json(s: &TopicSpec) -> serde_json::Value {
    json!({
        "name": s.name,
        "partitions": s.partitions,
        "retention_ms": s.retention_ms,
        "retention_bytes": s.retention_bytes,
        "max_message_bytes": s.max_message_bytes,
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
        "{}\tpartitions={}\tretention.ms={}\tretention.bytes={}\tmax.message.bytes={}",
        s.name,
        s.partitions,
        limit(s.retention_ms),
        limit(s.retention_bytes),
        s.max_message_bytes
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
            };
            client.create_topic(spec).await?;
            match a.common.output {
                Output::Json => println!("{}", json!({"created": a.name})),
                Output::Text => println!("created topic {}", a.name),
            }
        }
        TopicCommand::List(a) => {
            let client = a.connect.connect().await?;
            for t in client.list_topics().await? {
                match a.output {
                    Output::Json => println!("{}", spec_json(&t)),
                    Output::Text => println!("{}", spec_text(&t)),
                }
            }
        }
        TopicCommand::Describe(a) => {
            let client = a.common.connect.connect().await?;
            let (spec, partitions) = client.describe_topic(&a.name).await?;
            match a.common.output {
                Output::Json => {
                    let mut v = spec_json(&spec);
                    v["partition_offsets"] = partitions
                        .iter()
                        .map(|p| json!({"partition": p.partition, "log_start": p.log_start, "log_end": p.log_end}))
                        .collect();
                    println!("{v}");
                }
                Output::Text => {
                    println!("{}", spec_text(&spec));
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
                Output::Json => println!("{}", json!({"deleted": a.name})),
                Output::Text => println!("deleted topic {}", a.name),
            }
        }
    }
    Ok(())
}
