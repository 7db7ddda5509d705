//! `edgebus consume TOPIC`.

use base64::Engine;
use clap::Args;
use edgebus_client::{
    Client, GroupConfig, GroupConsumer, PluginRef, Position, StoredRecord, SubscribeConfig,
    Subscription,
};
use serde_json::json;
use tokio::sync::mpsc;

use super::plugin::{parse_param, parse_plugin_ref};
use super::{ConnectArgs, Failure, Output, PolicyArg};

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic to read.
    topic: String,
    /// Where to start: earliest, latest, an offset, or @RFC3339 time.
    #[arg(long, default_value = "earliest", value_parser = parse_from)]
    from: Position,
    /// Read one partition (default: all).
    #[arg(long)]
    partition: Option<u32>,
    /// Stop after this many records.
    #[arg(long)]
    max: Option<u64>,
    /// Keep waiting for new records instead of stopping at the log end.
    #[arg(long)]
    follow: bool,
    /// Consume as a member of this group: resume from its committed
    /// offsets, share partitions with its other members, and commit as
    /// records are printed.
    #[arg(long, conflicts_with_all = ["from", "partition"])]
    group: Option<String>,
    /// Have the broker run this plugin on the records and send only its
    /// results, `NAME[:key=value,…]`; repeat for a chain.
    #[arg(long = "filter", value_parser = parse_plugin_ref)]
    filters: Vec<PluginRef>,
    /// A `key=value` parameter for the last `--filter`.
    #[arg(long = "param", value_parser = parse_param, requires = "filters")]
    params: Vec<(String, String)>,
    /// What the broker does with records a filter plugin fails on.
    #[arg(long, value_enum, default_value_t)]
    on_failure: PolicyArg,
    /// `json` prints one object per record.
    #[arg(long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    connect: ConnectArgs,
}

impl ConsumeArgs {
    fn subscribe_config(&self) -> SubscribeConfig {
        let mut chain = self.filters.clone();
        if let Some(last) = chain.last_mut() {
            last.params.extend(self.params.iter().cloned());
        }
        SubscribeConfig {
            chain,
            on_failure: self.on_failure.into(),
            ..SubscribeConfig::default()
        }
    }
}

/// Parses `earliest | latest | N | @RFC3339`.
pub fn parse_from(s: &str) -> Result<Position, String> {
    match s {
        "earliest" => Ok(Position::Earliest),
        "latest" => Ok(Position::Latest),
        _ if s.starts_with('@') => {
            let t = time::OffsetDateTime::parse(
                &s[1..],
                &time::format_description::well_known::Rfc3339,
            )
            .map_err(|e| format!("{s:?} is not @RFC3339 (e.g. @2026-01-02T03:04:05Z): {e}"))?;
            Ok(Position::Timestamp(
                (t.unix_timestamp_nanos() / 1_000_000) as i64,
            ))
        }
        _ => s
            .parse::<u64>()
            .map(Position::Offset)
            .map_err(|_| format!("{s:?} is not earliest, latest, an offset or @RFC3339")),
    }
}

pub async fn run(args: ConsumeArgs) -> Result<(), Failure> {
    let client = args.connect.connect().await?;
    if let Some(group) = &args.group {
        return run_group(client, group, &args).await;
    }
    let (spec, offsets) = client.describe_topic(&args.topic).await?;
    let partitions: Vec<u32> = match args.partition {
        Some(p) if p >= spec.partitions => {
            return Err(Failure::new(
                4,
                format!("topic {:?} has {} partitions", args.topic, spec.partitions),
            ));
        }
        Some(p) => vec![p],
        None => (0..spec.partitions).collect(),
    };
    let (tx, mut rx) = mpsc::channel(1024);
    for p in partitions {
        let log_end = offsets[p as usize].log_end;
        // Without --follow, stop at the log end as it was when we started.
        let stop_at = (!args.follow).then_some(log_end);
        let from = match args.from {
            // Across all partitions, an offset past one partition's end
            // means "nothing yet" there, not an error.
            Position::Offset(n) if args.partition.is_none() && n > log_end => {
                Position::Offset(log_end)
            }
            from => from,
        };
        tokio::spawn(read_partition(
            client.clone(),
            (args.topic.clone(), p),
            from,
            stop_at,
            args.subscribe_config(),
            tx.clone(),
        ));
    }
    drop(tx);
    let mut printed = 0u64;
    while let Some(item) = rx.recv().await {
        let (partition, record) = item?;
        print_record(&args.topic, partition, &record, args.output);
        printed += 1;
        if args.max.is_some_and(|m| printed >= m) {
            break;
        }
    }
    Ok(())
}

/// Consumes as a group member. Without `--follow`, stops once every
/// assigned partition has been read to its log end, then commits and leaves.
async fn run_group(client: Client, group: &str, args: &ConsumeArgs) -> Result<(), Failure> {
    let mut consumer = GroupConsumer::join(
        client,
        GroupConfig::new(group.to_owned(), vec![args.topic.clone()]),
    )
    .await?;
    let mut printed = 0u64;
    let mut check = tokio::time::interval(std::time::Duration::from_millis(100));
    loop {
        tokio::select! {
            item = consumer.next() => {
                let Some(item) = item else { break };
                let r = item?;
                print_record(&r.topic, r.partition, &r.record, args.output);
                printed += 1;
                if args.max.is_some_and(|m| printed >= m) {
                    break;
                }
            }
            _ = check.tick(), if !args.follow => {
                if consumer.caught_up() {
                    break;
                }
            }
        }
    }
    consumer.close().await?;
    Ok(())
}

type Item = Result<(u32, StoredRecord), Failure>;

async fn read_partition(
    client: Client,
    (topic, partition): (String, u32),
    from: Position,
    stop_at: Option<u64>,
    config: SubscribeConfig,
    tx: mpsc::Sender<Item>,
) {
    if let Some(end) = stop_at {
        match client.list_offset(&topic, partition, from).await {
            Ok(start) if start >= end => return,
            Ok(_) => {}
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        }
    }
    let mut sub = match Subscription::start(client, &topic, partition, from, config).await {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Err(e.into())).await;
            return;
        }
    };
    let mut position = sub.position_watch();
    loop {
        let item = tokio::select! {
            item = sub.next() => item,
            // With a read-path filter the last records before the end may
            // never arrive; the broker's position says when it passed them.
            changed = position.changed(), if stop_at.is_some() => {
                let passed = *position.borrow();
                if changed.is_err() || passed.zip(stop_at).is_some_and(|(p, end)| p >= end) {
                    return;
                }
                continue;
            }
        };
        let Some(item) = item else { return };
        let record = match item {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        let done = stop_at.is_some_and(|end| record.offset + 1 >= end);
        if tx.send(Ok((partition, record))).await.is_err() || done {
            return;
        }
    }
}

/// Text if the bytes are UTF-8, else base64, and which one it is.
fn encode(bytes: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_owned(), "utf8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(bytes),
            "base64",
        ),
    }
}

fn print_record(topic: &str, partition: u32, r: &StoredRecord, output: Output) {
    match output {
        Output::Text => {
            let (value, _) = encode(&r.value);
            match &r.key {
                Some(k) => println!("{}\t{value}", encode(k).0),
                None => println!("{value}"),
            }
        }
        Output::Json | Output::Yaml => {
            let (value, value_encoding) = encode(&r.value);
            let key = r.key.as_ref().map(|k| encode(k));
            let headers: Vec<_> = r
                .headers
                .iter()
                .map(|h| {
                    let (value, encoding) = encode(&h.value);
                    json!({"key": h.key, "value": value, "value_encoding": encoding})
                })
                .collect();
            output.emit(&json!({
                    "topic": topic,
                    "partition": partition,
                    "offset": r.offset,
                    "timestamp": r.timestamp_ms,
                    "key": key.as_ref().map(|k| &k.0),
                    "key_encoding": key.as_ref().map(|k| k.1),
                    "value": value,
                    "value_encoding": value_encoding,
                    "headers": headers,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_from_accepts_every_documented_form() {
        assert_eq!(parse_from("earliest"), Ok(Position::Earliest));
        assert_eq!(parse_from("latest"), Ok(Position::Latest));
        assert_eq!(parse_from("42"), Ok(Position::Offset(42)));
        assert_eq!(
            parse_from("@2026-01-02T03:04:05Z"),
            Ok(Position::Timestamp(1_767_323_045_000))
        );
        assert!(parse_from("yesterday").is_err());
        assert!(parse_from("@not-a-time").is_err());
    }

    #[test]
    fn encode_marks_binary_as_base64() {
        assert_eq!(encode(b"hi"), ("hi".to_owned(), "utf8"));
        assert_eq!(encode(&[0xff, 0x00]), ("/wA=".to_owned(), "base64"));
    }
}
