//! `edgebus consume TOPIC`.

use clap::Args;
use edgebus_client::{
    Client, GroupConfig, GroupConsumer, PartitionInfo, PluginRef, Position, StoredRecord,
    SubscribeConfig, Subscription,
};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

use super::format::{Columns, RecordFormat, Template};
use super::plugin::{parse_param, parse_plugin_ref};
use super::stdout::Stdout;
use super::{ConnectArgs, Failure, Output, PolicyArg};

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  edgebus consume sensors --from -10 --print-offset --print-timestamp
      the last 10 records of each partition, with offset and time
  edgebus consume sensors --follow --format '%p/%o %k=%v %h\\n'
      keep printing new records, one line each, as the template says
  edgebus consume orders --group billing --follow
      share the partitions with the group's other members; Ctrl-C commits,
      leaves the group and exits 0")]
pub struct ConsumeArgs {
    /// Topic to read.
    topic: String,
    /// Where to start in each partition: earliest, latest, an offset, -N
    /// for the last N records, or @RFC3339 time. An offset past a
    /// partition's log end is refused.
    #[arg(
        long,
        default_value = "earliest",
        value_parser = parse_start,
        allow_negative_numbers = true
    )]
    from: Start,
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
    /// records are printed. Ctrl-C commits and leaves the group.
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
    /// Keep the filters' plugin state in the broker under this name (per
    /// partition), so the next `consume` with the name goes on from it,
    /// after a broker restart too. With `--group`, the group's name is the
    /// default; otherwise the state ends with the command.
    #[arg(long, value_name = "NAME", requires = "filters")]
    plugin_state: Option<String>,
    /// `text` prints `key<TAB>value` (the value alone for records without
    /// a key); `json` one object per line; `yaml` one document per record.
    #[arg(long, value_enum, default_value_t)]
    output: Output,
    /// Print each record with this template: %t topic, %p partition, %o
    /// offset, %k key, %v value, %h headers (k=v,…), %T timestamp (RFC
    /// 3339), %% a percent sign; \n and \t escapes. Nothing is added, so
    /// end it with \n.
    #[arg(long, value_parser = Template::parse, conflicts_with_all = PRINT_FLAGS)]
    format: Option<Template>,
    /// Print the key column (empty for records without a key).
    #[arg(long)]
    print_keys: bool,
    /// Print the partition column.
    #[arg(long)]
    print_partition: bool,
    /// Print the offset column.
    #[arg(long)]
    print_offset: bool,
    /// Print the headers column, `k=v,…`.
    #[arg(long)]
    print_headers: bool,
    /// Print the record timestamp column, RFC 3339 in UTC.
    #[arg(long)]
    print_timestamp: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// The `--print-*` flags, which `--format` replaces.
const PRINT_FLAGS: [&str; 5] = [
    "print_keys",
    "print_partition",
    "print_offset",
    "print_headers",
    "print_timestamp",
];

impl ConsumeArgs {
    fn subscribe_config(&self) -> SubscribeConfig {
        let mut chain = self.filters.clone();
        if let Some(last) = chain.last_mut() {
            last.params.extend(self.params.iter().cloned());
        }
        let plugin_state = self.plugin_state.clone().or_else(|| self.group.clone());
        SubscribeConfig {
            chain,
            on_failure: self.on_failure.into(),
            plugin_state: plugin_state.unwrap_or_default(),
            ..SubscribeConfig::default()
        }
    }

    /// How records are printed; `--format` and `--print-*` shape text
    /// lines, so they are refused beside `--output json|yaml`.
    fn record_format(&self) -> Result<RecordFormat, Failure> {
        let columns = Columns {
            timestamp: self.print_timestamp,
            partition: self.print_partition,
            offset: self.print_offset,
            key: self.print_keys,
            headers: self.print_headers,
        };
        if self.output != Output::Text && (self.format.is_some() || columns != Columns::default()) {
            return Err(Failure::new(
                2,
                "--format and --print-* shape text output; they cannot be used with --output json or yaml",
            ));
        }
        Ok(RecordFormat::new(self.output, self.format.clone(), columns))
    }
}

/// Where `consume` starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A position the broker resolves.
    At(Position),
    /// `-N`: the last N records, or all of them if there are fewer.
    Last(u64),
}

impl Start {
    /// The position to read `info`'s partition from, or the offset past its
    /// log end that was asked for.
    fn resolve(self, info: &PartitionInfo) -> Result<Position, u64> {
        match self {
            Start::Last(n) => Ok(Position::Offset(
                info.log_end.saturating_sub(n).max(info.log_start),
            )),
            Start::At(Position::Offset(o)) if o > info.log_end => Err(o),
            Start::At(p) => Ok(p),
        }
    }
}

/// Parses `-N`, or what [`parse_from`] takes.
fn parse_start(s: &str) -> Result<Start, String> {
    match s.strip_prefix('-') {
        Some(n) => n
            .parse::<u64>()
            .map(Start::Last)
            .map_err(|_| format!("{s:?} is not -N (the last N records of each partition)")),
        None if s.starts_with('@') => parse_from(s).map(Start::At),
        None => parse_from(s)
            .map(Start::At)
            .map_err(|_| format!("{s:?} is not earliest, latest, an offset, -N or @RFC3339")),
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
    let format = args.record_format()?;
    let client = args.connect.connect().await?;
    consume(&client, &args, &format).await
}

async fn consume(
    client: &Client,
    args: &ConsumeArgs,
    format: &RecordFormat,
) -> Result<(), Failure> {
    // Asked first even for a group, so an unknown topic is an error at
    // once rather than a member that never gets a partition.
    let (spec, offsets) = client.describe_topic(&args.topic).await?;
    if args.max == Some(0) {
        return Ok(());
    }
    let mut out = Stdout::new();
    if let Some(group) = &args.group {
        return run_group(client.clone(), group, args, format, &mut out).await;
    }
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
    let mut starts = Vec::with_capacity(partitions.len());
    let mut past_end = Vec::new();
    for &p in &partitions {
        let info = &offsets[p as usize];
        match args.from.resolve(info) {
            Ok(from) => starts.push((p, from, info.log_end)),
            Err(offset) => past_end.push((offset, format!("partition {p} ({})", info.log_end))),
        }
    }
    // One partition or all, an offset past a log end is the same mistake,
    // and the broker refuses it: say so for every such partition rather
    // than quietly printing nothing (or, with --follow, records before it).
    if let Some((offset, _)) = past_end.first() {
        let partitions: Vec<&str> = past_end.iter().map(|(_, p)| p.as_str()).collect();
        return Err(Failure::new(
            4,
            format!(
                "offset {offset} is past the log end of {}",
                partitions.join(", ")
            ),
        ));
    }
    let (tx, mut rx) = mpsc::channel(1024);
    for (p, from, log_end) in starts {
        // Without --follow, stop at the log end as it was when we started.
        let stop_at = (!args.follow).then_some(log_end);
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
    let mut line = String::new();
    while args.max.is_none_or(|m| printed < m) {
        let item = match rx.try_recv() {
            Ok(item) => item,
            // Lines are buffered while records are ready and flushed
            // before waiting for more, so a pipe sees each at once.
            Err(TryRecvError::Empty) => {
                out.flush()?;
                match rx.recv().await {
                    Some(item) => item,
                    None => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        let (partition, record) = item?;
        line.clear();
        format.render(&args.topic, partition, &record, &mut line)?;
        out.write(&line)?;
        printed += 1;
    }
    out.flush()
}

/// Consumes as a group member. Without `--follow`, stops once every
/// assigned partition has been read to its log end. However it stops (the
/// log end, `--max`, Ctrl-C, a closed stdout, an error), it then commits
/// what was printed and leaves, so the partitions move to the other members
/// at once rather than after the session timeout.
async fn run_group(
    client: Client,
    group: &str,
    args: &ConsumeArgs,
    format: &RecordFormat,
    out: &mut Stdout,
) -> Result<(), Failure> {
    // Registered before joining, so a Ctrl-C from here on leaves the group
    // instead of killing the process; `ctrl_c` registers on its first poll.
    let mut interrupt = Box::pin(tokio::signal::ctrl_c());
    let _ = futures::poll!(interrupt.as_mut());
    let config = GroupConfig {
        subscribe: args.subscribe_config(),
        ..GroupConfig::new(group.to_owned(), vec![args.topic.clone()])
    };
    let mut consumer = GroupConsumer::join(client, config).await?;
    let printed = print_group(&mut consumer, args, format, out, interrupt).await;
    // The signal handler stays installed, so a second Ctrl-C is how a user
    // gives up on a broker that does not answer.
    let left = tokio::select! {
        left = consumer.close() => left.map_err(Failure::from),
        _ = tokio::signal::ctrl_c() => Err(Failure::other(
            "interrupted while leaving the group; the broker expires the member after its session timeout",
        )),
    };
    printed.and(left)
}

async fn print_group(
    consumer: &mut GroupConsumer,
    args: &ConsumeArgs,
    format: &RecordFormat,
    out: &mut Stdout,
    mut interrupt: std::pin::Pin<Box<impl Future<Output = std::io::Result<()>>>>,
) -> Result<(), Failure> {
    let mut printed = 0u64;
    let mut line = String::new();
    let mut check = tokio::time::interval(std::time::Duration::from_millis(100));
    while args.max.is_none_or(|m| printed < m) {
        tokio::select! {
            item = consumer.next() => {
                let Some(item) = item else { break };
                let r = item?;
                line.clear();
                format.render(&r.topic, r.partition, &r.record, &mut line)?;
                out.write(&line)?;
                // Asking for the next record marks this one processed, and
                // so committable: it must have reached stdout by then.
                out.flush()?;
                printed += 1;
            }
            _ = check.tick(), if !args.follow => {
                if consumer.caught_up() {
                    break;
                }
            }
            interrupted = interrupt.as_mut() => {
                return interrupted
                    .map_err(|e| Failure::other(format!("listening for Ctrl-C: {e}")));
            }
        }
    }
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
    fn parse_start_takes_minus_n_as_the_last_n_records() {
        assert_eq!(parse_start("-10"), Ok(Start::Last(10)));
        assert_eq!(parse_start("7"), Ok(Start::At(Position::Offset(7))));
        assert!(parse_start("-x").is_err());
        assert!(parse_start("soon").unwrap_err().contains("-N"));
    }

    #[test]
    fn last_n_starts_n_before_the_end_but_not_before_the_start() {
        let info = PartitionInfo {
            partition: 0,
            log_start: 4,
            log_end: 20,
            size_bytes: 0,
        };
        assert_eq!(Start::Last(5).resolve(&info), Ok(Position::Offset(15)));
        assert_eq!(Start::Last(50).resolve(&info), Ok(Position::Offset(4)));
        assert_eq!(Start::At(Position::Offset(21)).resolve(&info), Err(21));
        assert_eq!(
            Start::At(Position::Offset(20)).resolve(&info),
            Ok(Position::Offset(20))
        );
    }
}
