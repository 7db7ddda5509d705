//! `edgebus produce TOPIC`: one record per stdin line.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use clap::Args;
use edgebus_client::{
    ClientError, Compression, DeliveryFuture, DeliveryStatus, Producer, ProducerConfig, Record,
    RecordMetadata,
};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use super::{AcksArg, ConnectArgs, Failure, Output};
use edgebus::retention::now_ms;

const EXAMPLES: &str = "\
Examples:
  printf 't1:21.5\\nt2:19.0\\n' | edgebus produce sensors --key-separator : --output json
  base64 < blobs.txt | edgebus produce images --value-format base64 -H source=cam1";

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
pub struct ProduceArgs {
    /// Topic to write to.
    topic: String,
    /// Split each line at the first SEP into key and value (`\t` is a tab).
    #[arg(long, value_name = "SEP", value_parser = parse_separator, conflicts_with = "record_key")]
    key_separator: Option<Separator>,
    /// Give every record this key (`--key` is the TLS client key).
    #[arg(short = 'k', long, value_name = "KEY")]
    record_key: Option<String>,
    /// Add a header to every record (repeatable).
    #[arg(short = 'H', long = "header", value_name = "KEY=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// How each line's value is written: as its raw bytes (`text`), or
    /// decoded from `base64` or `hex`.
    #[arg(long, value_enum, default_value_t)]
    value_format: ValueFormat,
    /// Write every record to this partition instead of partitioning by key.
    #[arg(long)]
    partition: Option<u32>,
    /// Acknowledgement level.
    #[arg(long, value_enum, default_value_t)]
    acks: AcksArg,
    /// Compress each batch with this codec (none, lz4, zstd); the broker
    /// stores it compressed.
    #[arg(long, default_value = "none")]
    compression: Compression,
    /// Give up on a record not acknowledged within this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
    /// `json` and `yaml` print one object per input line saying what became
    /// of it.
    #[arg(long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// `--value-format` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
enum ValueFormat {
    /// The line's bytes as they are (any bytes, not only UTF-8).
    #[default]
    Text,
    /// Standard base64.
    Base64,
    /// Hexadecimal digits.
    Hex,
}

/// A key separator's bytes.
#[derive(Debug, Clone)]
struct Separator(Vec<u8>);

/// A key separator, with `\t`, `\n`, `\r` and `\\` understood as escapes
/// (a shell passes `'\t'` as two characters). Empty is refused: it would
/// silently make every line a value without a key.
fn parse_separator(s: &str) -> Result<Separator, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next() {
            Some('t') => out.push(b'\t'),
            Some('r') => out.push(b'\r'),
            Some('\\') => out.push(b'\\'),
            Some(other) => return Err(format!("unknown escape \\{other} (use \\t, \\r or \\\\)")),
            None => return Err("a separator cannot end with a lone backslash".into()),
        }
    }
    if out.is_empty() {
        return Err("the key separator cannot be empty".into());
    }
    if out.contains(&b'\n') {
        return Err("the key separator cannot contain a newline: records are lines".into());
    }
    Ok(Separator(out))
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Where a line's record went, or why it never left.
type Sent = Result<DeliveryFuture, ClientError>;

pub async fn run(args: ProduceArgs) -> Result<(), Failure> {
    let client = args.connect.connect().await?;
    // One check up front: a missing topic or partition is one error and
    // exit 4, not one error per input line.
    let (spec, _) = client.describe_topic(&args.topic).await?;
    if let Some(p) = args.partition
        && p >= spec.partitions
    {
        return Err(Failure::new(
            4,
            format!(
                "topic {:?} has {} partitions; there is no partition {p}",
                args.topic, spec.partitions
            ),
        ));
    }
    let config = ProducerConfig {
        acks: args.acks.into(),
        compression: args.compression,
        delivery_timeout: Duration::from_secs(args.timeout_s),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config).await?;
    let (tx, rx) = mpsc::channel::<(u64, Sent)>(65536);
    let printer = tokio::spawn(print_acks(args.topic.clone(), args.output, rx));
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    let mut line_no = 0u64;
    loop {
        line.clear();
        if stdin
            .read_until(b'\n', &mut line)
            .await
            .map_err(Failure::other)?
            == 0
        {
            break;
        }
        line_no += 1;
        let sent = match record(&args, trim_newline(&line)) {
            Ok(record) => match args.partition {
                Some(p) => producer.send_to(&args.topic, p, record).await,
                None => producer.send(&args.topic, record).await,
            },
            Err(e) => Err(e),
        };
        if tx.send((line_no, sent)).await.is_err() {
            break;
        }
    }
    producer.flush().await?;
    drop(tx);
    let tally = printer.await.map_err(Failure::other)?;
    if tally.failed > 0 {
        return Err(Failure::unacknowledged(format!(
            "{} of {} records were not acknowledged",
            tally.failed,
            tally.delivered + tally.failed
        )));
    }
    if args.output == Output::Text {
        eprintln!("{}", tally.summary());
    }
    Ok(())
}

/// A line without its `\n` (or `\r\n`).
fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The record one input line stands for.
fn record(args: &ProduceArgs, line: &[u8]) -> Result<Record, ClientError> {
    let (key, value) = match &args.key_separator {
        Some(Separator(sep)) => match find(line, sep) {
            Some(at) => (Some(&line[..at]), &line[at + sep.len()..]),
            None => (None, line),
        },
        None => (None, line),
    };
    let value: Bytes = match args.value_format {
        ValueFormat::Text => Bytes::copy_from_slice(value),
        ValueFormat::Base64 => base64::engine::general_purpose::STANDARD
            .decode(value)
            .map_err(|e| ClientError::Config(format!("invalid base64 value: {e}")))?
            .into(),
        ValueFormat::Hex => hex::decode(value)
            .map_err(|e| ClientError::Config(format!("invalid hex value: {e}")))?
            .into(),
    };
    let mut record = Record::new(value, now_ms());
    if let Some(key) = key {
        record = record.with_key(Bytes::copy_from_slice(key));
    } else if let Some(key) = &args.record_key {
        record = record.with_key(key.clone());
    }
    for (k, v) in &args.headers {
        record = record.with_header(k.clone(), v.clone());
    }
    Ok(record)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Counts of what became of the input lines.
#[derive(Debug, Default)]
struct Tally {
    delivered: u64,
    failed: u64,
    stored: u64,
    duplicate: u64,
    filtered: u64,
    dead_lettered: u64,
    dropped: u64,
}

impl Tally {
    fn add(&mut self, status: &DeliveryStatus) {
        self.delivered += 1;
        match status {
            DeliveryStatus::Stored { .. } | DeliveryStatus::Sent => self.stored += 1,
            DeliveryStatus::Duplicate => self.duplicate += 1,
            DeliveryStatus::Filtered => self.filtered += 1,
            DeliveryStatus::DeadLettered { .. } => self.dead_lettered += 1,
            DeliveryStatus::Dropped { .. } => self.dropped += 1,
            _ => {}
        }
    }

    fn summary(&self) -> String {
        let mut parts = vec![format!("{} records acknowledged", self.delivered)];
        for (n, what) in [
            (self.duplicate, "already stored"),
            (self.filtered, "filtered"),
            (self.dead_lettered, "dead-lettered"),
            (self.dropped, "dropped by a failing plugin"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        if parts.len() > 1 {
            parts[0] = format!("{}: {} stored", parts[0], self.stored);
        }
        parts.join(", ")
    }
}

/// Prints acks in line order and counts them.
async fn print_acks(topic: String, output: Output, mut rx: mpsc::Receiver<(u64, Sent)>) -> Tally {
    let mut tally = Tally::default();
    while let Some((line, sent)) = rx.recv().await {
        let result = match sent {
            Ok(fut) => fut.await,
            Err(e) => Err(e),
        };
        match result {
            Ok(meta) => {
                tally.add(&meta.status);
                if output != Output::Text {
                    output.emit(&ack_json(line, &topic, &meta));
                }
            }
            Err(e) => {
                tally.failed += 1;
                let message = e.to_string();
                match output {
                    Output::Text => eprintln!("line {line}: not acknowledged: {message}"),
                    _ => output.emit(&json!({
                        "line": line,
                        "topic": topic,
                        "status": "failed",
                        "retriable": e.is_retriable(),
                        "code": e.code().map(|c| c as u16),
                        "error": message,
                    })),
                }
            }
        }
    }
    tally
}

/// One line's ack: `status` always, `offset` only where the record is in
/// the topic.
fn ack_json(line: u64, topic: &str, meta: &RecordMetadata) -> serde_json::Value {
    let mut v = json!({
        "line": line,
        "topic": topic,
        "partition": meta.partition,
        "status": meta.status.name(),
    });
    if let Some(offset) = meta.offset {
        v["offset"] = json!(offset);
    }
    match &meta.status {
        DeliveryStatus::Stored { count } if *count > 1 => v["count"] = json!(count),
        DeliveryStatus::DeadLettered { topic, offset } => {
            v["dead_letter_topic"] = json!(topic);
            v["dead_letter_partition"] = json!(0);
            v["dead_letter_offset"] = json!(offset);
        }
        DeliveryStatus::Dropped { reason } => v["reason"] = json!(reason),
        _ => {}
    }
    v
}
