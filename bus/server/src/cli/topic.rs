//! `edgebus topic create | alter | list | describe | delete`.

use clap::{Args, Subcommand};
use edgebus_client::{
    AttachCounters, Client, Compression, FailurePolicy, PartitionInfo, PluginRef, TopicSpec,
};
use edgebus_proto::ErrorCode;
use edgebus_proto::frame::{PartitionReplication, RebuildingCopy, Request, Response, TopicChanges};
use serde_json::json;

use super::plugin::{chain_text, parse_plugin_ref, policy_name};
use super::table::{self, Table};
use super::{CommonArgs, Failure, Output, PolicyArg};

#[derive(Debug, Subcommand)]
#[command(after_help = "Examples:
  edgebus topic create orders --partitions 6
  edgebus topic describe orders")]
pub enum TopicCommand {
    /// Create a topic.
    #[command(after_help = "Examples:
  edgebus topic create orders --partitions 6 --retention-ms 604800000
  edgebus topic create sensors --if-not-exists --compression zstd \\
      --ingest 'json-filter:field=celsius,op=>=,value=-40' --on-failure dead-letter")]
    Create(CreateArgs),
    /// Change a topic's settings, partition count or ingest plugin chain.
    #[command(after_help = "Examples:
  edgebus topic alter orders --partitions 12 --retention-bytes 1073741824
  edgebus topic alter sensors --ingest redact:fields=owner --on-failure skip")]
    Alter(AlterArgs),
    /// List topics.
    #[command(after_help = "Examples:
  edgebus topic list
  edgebus topic list --output json")]
    List(CommonArgs),
    /// Show a topic's settings, ingest chain, and per partition its
    /// offsets, record count and size.
    #[command(after_help = "Examples:
  edgebus topic describe orders
  edgebus topic describe orders --output yaml")]
    Describe(NamedArgs),
    /// Delete a topic and all its records (refused while a pipeline reads
    /// or writes it).
    #[command(after_help = "Examples:
  edgebus topic delete orders
  edgebus pipeline delete thin && edgebus topic delete sensors-1in10")]
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
    /// Succeed without changing anything if the topic exists.
    #[arg(long)]
    if_not_exists: bool,
    /// Copies of each partition, on different nodes of a cluster (default
    /// 3, at most the node count; a single node takes 1).
    #[arg(long, value_name = "R")]
    replication_factor: Option<u32>,
    /// `acks=all` needs this many in-sync replicas (default 2, at most the
    /// replication factor).
    #[arg(long, value_name = "M")]
    min_insync_replicas: Option<u32>,
    /// With no in-sync replica left, let a partition elect an out-of-sync
    /// replica (losing what only the in-sync ones had) instead of waiting
    /// for one to return; off by default.
    #[arg(long)]
    unclean_leader_election: bool,
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
    #[arg(long, value_enum, default_value_t, requires = "ingest")]
    on_failure: PolicyArg,
}

#[derive(Debug, Args)]
pub struct AlterArgs {
    /// Topic name.
    name: String,
    /// Grow the topic to this many partitions. Partitions are never
    /// removed; consumer groups rebalance onto the new ones.
    #[arg(long)]
    partitions: Option<u32>,
    /// Delete batches older than this many ms (-1: keep forever).
    #[arg(long, allow_negative_numbers = true)]
    retention_ms: Option<i64>,
    /// Keep each partition under about this many bytes (-1: no limit).
    #[arg(long, allow_negative_numbers = true)]
    retention_bytes: Option<i64>,
    /// Largest record accepted from now on.
    #[arg(long)]
    max_message_bytes: Option<u32>,
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

/// The settings of a topic, as `key  value` lines.
fn spec_summary(s: &TopicSpec) -> Vec<(&'static str, String)> {
    vec![
        ("name", s.name.clone()),
        ("partitions", s.partitions.to_string()),
        ("retention.ms", table::ms_limit(s.retention_ms)),
        ("retention.bytes", table::byte_limit(s.retention_bytes)),
        (
            "max.message.bytes",
            table::byte_limit(i64::from(s.max_message_bytes)),
        ),
        ("compression", s.compression.name().to_owned()),
    ]
}

/// A plugin attachment's counters on one line.
pub(super) fn counters_text(c: &AttachCounters) -> String {
    format!(
        "in={} out={} filtered={} failed={} dead-lettered={} budget-breaches={} log-lines={} \
         log-lines-dropped={} calls={} call-p50={}µs call-p99={}µs instance-replacements={} \
         state={} failing-cpu={}µs",
        c.records_in,
        c.records_out,
        c.filtered,
        c.failed,
        c.dead_lettered,
        c.budget_breaches,
        c.log_lines,
        c.log_lines_dropped,
        c.calls,
        c.call_p50_us,
        c.call_p99_us,
        c.instance_replacements,
        table::bytes(c.state_bytes),
        c.failing_cpu_us
    )
}

/// A plugin attachment's counters as JSON.
pub(super) fn counters_json(c: &AttachCounters) -> serde_json::Value {
    json!({
        "in": c.records_in,
        "out": c.records_out,
        "filtered": c.filtered,
        "failed": c.failed,
        "dead_lettered": c.dead_lettered,
        "budget_breaches": c.budget_breaches,
        "log_lines": c.log_lines,
        "log_lines_dropped": c.log_lines_dropped,
        "calls": c.calls,
        "call_p50_us": c.call_p50_us,
        "call_p99_us": c.call_p99_us,
        "instance_replacements": c.instance_replacements,
        "state_bytes": c.state_bytes,
        "failing_cpu_us": c.failing_cpu_us,
    })
}

async fn create(a: CreateArgs) -> Result<(), Failure> {
    let client = a.common.connect.connect().await?;
    let spec = TopicSpec {
        name: a.name.clone(),
        partitions: a.partitions,
        retention_ms: a.retention_ms,
        retention_bytes: a.retention_bytes,
        max_message_bytes: a.max_message_bytes.unwrap_or(0),
        compression: a.compression,
    };
    let created = match (
        a.replication_factor,
        a.min_insync_replicas,
        a.unclean_leader_election,
    ) {
        (None, None, false) => client.create_topic(spec).await,
        (replication_factor, min_insync_replicas, unclean_leader_election) => {
            let request = Request::CreateReplicatedTopic {
                spec,
                replication_factor: replication_factor.unwrap_or(0),
                min_insync_replicas: min_insync_replicas.unwrap_or(0),
                unclean_leader_election,
            };
            match client.request(&request).await {
                Ok(Response::TopicCreated) => Ok(()),
                Ok(other) => return Err(Failure::other(format!("unexpected reply {other:?}"))),
                Err(e) => Err(e),
            }
        }
    };
    match created {
        Err(e) if a.if_not_exists && e.code() == Some(ErrorCode::TopicExists) => {
            match a.common.output {
                o @ (Output::Json | Output::Yaml) => o.emit(&json!({"exists": a.name})),
                Output::Text => println!("topic {} exists; left as it is", a.name),
            }
            return Ok(());
        }
        created => created?,
    }
    if !a.ingest.ingest.is_empty() {
        set_ingest(&client, &a.name, a.ingest).await?;
    }
    match a.common.output {
        o @ (Output::Json | Output::Yaml) => o.emit(&json!({"created": a.name})),
        Output::Text => println!("created topic {}", a.name),
    }
    Ok(())
}

async fn alter(a: AlterArgs) -> Result<(), Failure> {
    let changes = TopicChanges {
        partitions: a.partitions,
        retention_ms: a.retention_ms,
        retention_bytes: a.retention_bytes,
        max_message_bytes: a.max_message_bytes,
    };
    let ingest = !a.ingest.ingest.is_empty() || a.clear_ingest;
    if changes.is_empty() && !ingest {
        return Err(Failure::new(
            2,
            "give a setting to change (--partitions, --retention-ms, --retention-bytes, \
             --max-message-bytes) or --ingest PLUGIN… or --clear-ingest",
        ));
    }
    let client = a.common.connect.connect().await?;
    let altered = if changes.is_empty() {
        None
    } else {
        let request = Request::AlterTopic {
            name: a.name.clone(),
            changes,
        };
        match client.request(&request).await? {
            Response::Topics(specs) => specs.into_iter().next(),
            other => return Err(Failure::other(format!("unexpected response {other:?}"))),
        }
    };
    if ingest {
        set_ingest(&client, &a.name, a.ingest).await?;
    }
    match a.common.output {
        o @ (Output::Json | Output::Yaml) => {
            let mut v = json!({"altered": a.name});
            if let Some(spec) = &altered {
                v["config"] = spec_json(spec);
            }
            o.emit(&v);
        }
        Output::Text => {
            println!("altered topic {}", a.name);
            if let Some(spec) = &altered {
                print!("{}", table::summary(&spec_summary(spec)));
            }
        }
    }
    Ok(())
}

async fn describe(a: NamedArgs) -> Result<(), Failure> {
    let client = a.common.connect.connect().await?;
    let (spec, partitions) = client.describe_topic(&a.name).await?;
    let replication = replication(&a, &client).await?;
    let plugins = client
        .request(&Request::TopicPlugins {
            topic: a.name.clone(),
        })
        .await?;
    let Response::TopicPlugins {
        ingest,
        on_failure,
        ingest_counters,
        read_counters,
    } = plugins
    else {
        return Err(Failure::other(format!("unexpected response {plugins:?}")));
    };
    if let out @ (Output::Json | Output::Yaml) = a.common.output {
        let mut v = spec_json(&spec);
        v["ingest"] = json!(chain_text(&ingest));
        v["on_failure"] = json!(policy_name(on_failure));
        v["ingest_counters"] = counters_json(&ingest_counters);
        v["read_counters"] = counters_json(&read_counters);
        v["size_bytes"] = json!(partitions.iter().map(|p| p.size_bytes).sum::<u64>());
        v["records"] = json!(partitions.iter().map(PartitionInfo::records).sum::<u64>());
        v["partition_offsets"] = partitions
            .iter()
            .map(|p| {
                json!({
                    "partition": p.partition,
                    "log_start": p.log_start,
                    "log_end": p.log_end,
                    "records": p.records(),
                    "size_bytes": p.size_bytes,
                })
            })
            .collect();
        v["replication"] = replication.iter().map(replication_json).collect();
        if let Some(r) = replication.first()
            && r.state.replicas.len() > 1
        {
            v["unclean_leader_election"] = json!(r.state.unclean_leader_election);
        }
        out.emit(&v);
        return Ok(());
    }
    let mut summary = spec_summary(&spec);
    let size: u64 = partitions.iter().map(|p| p.size_bytes).sum();
    summary.push(("size", table::bytes(size)));
    summary.push((
        "records",
        partitions
            .iter()
            .map(PartitionInfo::records)
            .sum::<u64>()
            .to_string(),
    ));
    if !ingest.is_empty() {
        summary.push(("ingest", chain_text(&ingest)));
        summary.push(("on failure", policy_name(on_failure)));
        summary.push(("ingest counters", counters_text(&ingest_counters)));
    }
    if read_counters.records_in > 0 {
        summary.push(("read-path counters", counters_text(&read_counters)));
    }
    print!("{}", table::summary(&summary));
    println!();
    let mut t = Table::new(&["PARTITION", "LOG-START", "LOG-END", "RECORDS", "SIZE"]);
    for p in &partitions {
        t.row(vec![
            p.partition.to_string(),
            p.log_start.to_string(),
            p.log_end.to_string(),
            p.records().to_string(),
            table::bytes(p.size_bytes),
        ]);
    }
    t.print();
    if replication.iter().any(|r| r.state.replicas.len() > 1) {
        println!();
        let mut t = Table::new(&[
            "PARTITION",
            "LEADER",
            "EPOCH",
            "REPLICAS",
            "ISR",
            "HIGH-WATERMARK",
            "LOG-ENDS",
            "REBUILDING",
        ]);
        let list = |nodes: &[u64]| {
            nodes
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        for r in &replication {
            let s = &r.state;
            t.row(vec![
                s.partition.to_string(),
                s.leader
                    .map_or_else(|| "none".to_owned(), |l| l.to_string()),
                s.leader_epoch.to_string(),
                list(&s.replicas),
                list(&s.isr),
                s.high_watermark.to_string(),
                r.log_ends
                    .iter()
                    .map(|(n, e)| format!("{n}:{e}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                rebuilding_text(&s.rebuilding),
            ]);
        }
        t.print();
        if let Some(r) = replication.first() {
            println!(
                "unclean.leader.election: {}",
                r.state.unclean_leader_election
            );
        }
    }
    Ok(())
}

pub async fn run(cmd: TopicCommand) -> Result<(), Failure> {
    match cmd {
        TopicCommand::Create(a) => create(a).await?,
        TopicCommand::Alter(a) => alter(a).await?,
        TopicCommand::List(a) => {
            let client = a.connect.connect().await?;
            let topics = client.list_topics().await?;
            match a.output {
                o @ (Output::Json | Output::Yaml) => {
                    for t in &topics {
                        o.emit(&spec_json(t));
                    }
                }
                Output::Text => {
                    let mut t = Table::new(&[
                        "NAME",
                        "PARTITIONS",
                        "RETENTION.MS",
                        "RETENTION.BYTES",
                        "MAX.MESSAGE.BYTES",
                        "COMPRESSION",
                    ]);
                    for s in &topics {
                        t.row(vec![
                            s.name.clone(),
                            s.partitions.to_string(),
                            table::ms_limit(s.retention_ms),
                            table::byte_limit(s.retention_bytes),
                            table::byte_limit(i64::from(s.max_message_bytes)),
                            s.compression.name().to_owned(),
                        ]);
                    }
                    t.print();
                }
            }
        }
        TopicCommand::Describe(a) => describe(a).await?,
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

/// One partition's replication, merged from what every node says: the
/// leader's view (high watermark, followers' log ends) and each node's own
/// log end.
struct Replication {
    state: PartitionReplication,
    log_ends: std::collections::BTreeMap<u64, u64>,
}

/// Each partition's replication. On a cluster every node is asked (a node
/// knows its own log end; only the leader knows the high watermark and its
/// followers' progress); a node that does not answer is left out.
async fn replication(a: &NamedArgs, client: &Client) -> Result<Vec<Replication>, Failure> {
    let request = Request::PartitionStates {
        topic: a.name.clone(),
    };
    let states = |response| match response {
        Response::PartitionStates(states) => Ok(states),
        other => Err(Failure::other(format!("unexpected reply {other:?}"))),
    };
    let mine = states(client.request(&request).await?)?;
    let nodes = match client.request(&Request::ClusterStatus).await? {
        Response::ClusterStatus(status) => status.nodes,
        _ => Vec::new(),
    };
    let mut answers = vec![mine.clone()];
    for node in nodes {
        let mut connect = a.common.connect.clone();
        connect.broker = Some(node.address.clone());
        let Ok(other) = connect.connect().await else {
            continue;
        };
        if let Ok(Ok(states)) = other.request(&request).await.map(states) {
            answers.push(states);
        }
    }
    let mut merged: Vec<Replication> = mine
        .into_iter()
        .map(|state| Replication {
            state,
            log_ends: Default::default(),
        })
        .collect();
    for answer in answers {
        for state in answer {
            let Some(m) = merged
                .iter_mut()
                .find(|m| m.state.partition == state.partition)
            else {
                continue;
            };
            if let Some(leader) = state.leader
                && state.leading
            {
                m.log_ends.insert(leader, state.log_end);
                for (node, end) in &state.replica_log_ends {
                    m.log_ends.entry(*node).or_insert(*end);
                }
                m.state = state;
            }
        }
    }
    Ok(merged)
}

/// `node:from` per copy being rebuilt, `(mending)` for a last in-sync
/// replica replacing its damaged batch; `-` for none.
fn rebuilding_text(copies: &[RebuildingCopy]) -> String {
    if copies.is_empty() {
        return "-".to_owned();
    }
    copies
        .iter()
        .map(|c| {
            let how = if c.mending { " (mending)" } else { "" };
            format!("{}:{}{how}", c.node, c.from)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn replication_json(r: &Replication) -> serde_json::Value {
    let s = &r.state;
    json!({
        "partition": s.partition,
        "leader": s.leader,
        "replicas": s.replicas,
        "isr": s.isr,
        "leader_epoch": s.leader_epoch,
        "high_watermark": s.high_watermark,
        "log_ends": r.log_ends.iter().map(|(n, e)| (n.to_string(), json!(e))).collect::<serde_json::Map<_, _>>(),
        "rebuilding": s.rebuilding.iter().map(|c| json!({
            "node": c.node,
            "from": c.from,
            "mending": c.mending,
        })).collect::<Vec<_>>(),
    })
}
