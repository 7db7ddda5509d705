//! `edgebus produce TOPIC`: one record per stdin line.

use std::time::Duration;

use clap::Args;
use edgebus_client::{Compression, DeliveryFuture, Producer, ProducerConfig, Record};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use super::{AcksArg, ConnectArgs, Failure, Output};
use edgebus::retention::now_ms;

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Topic to write to.
    topic: String,
    /// Split each line at the first SEP into key and value.
    #[arg(long, value_name = "SEP")]
    key_separator: Option<String>,
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
    /// `json` prints one line per acknowledged record.
    #[arg(long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    connect: ConnectArgs,
}

pub async fn run(args: ProduceArgs) -> Result<(), Failure> {
    let client = args.connect.connect().await?;
    let config = ProducerConfig {
        acks: args.acks.into(),
        compression: args.compression,
        delivery_timeout: Duration::from_secs(args.timeout_s),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config).await?;
    let (tx, rx) =
        mpsc::channel::<(u64, Result<DeliveryFuture, edgebus_client::ClientError>)>(65536);
    let printer = tokio::spawn(print_acks(args.topic.clone(), args.output, rx));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut line_no = 0u64;
    while let Some(line) = lines.next_line().await.map_err(Failure::other)? {
        line_no += 1;
        let record = match &args.key_separator {
            Some(sep) => match line.split_once(sep.as_str()) {
                Some((k, v)) => Record::new(v.to_owned(), now_ms()).with_key(k.to_owned()),
                None => Record::new(line, now_ms()),
            },
            None => Record::new(line, now_ms()),
        };
        let sent = match args.partition {
            Some(p) => producer.send_to(&args.topic, p, record).await,
            None => producer.send(&args.topic, record).await,
        };
        if tx.send((line_no, sent)).await.is_err() {
            break;
        }
    }
    producer.flush().await?;
    drop(tx);
    let (acked, failed) = printer.await.map_err(Failure::other)?;
    if failed > 0 {
        return Err(Failure::unacknowledged(format!(
            "{failed} of {} records were not acknowledged",
            acked + failed
        )));
    }
    if args.output == Output::Text {
        eprintln!("{acked} records acknowledged");
    }
    Ok(())
}

/// Prints acks in line order; returns (acknowledged, failed) counts.
async fn print_acks(
    topic: String,
    output: Output,
    mut rx: mpsc::Receiver<(u64, Result<DeliveryFuture, edgebus_client::ClientError>)>,
) -> (u64, u64) {
    let (mut acked, mut failed) = (0, 0);
    while let Some((line, sent)) = rx.recv().await {
        let result = match sent {
            Ok(fut) => fut.await,
            Err(e) => Err(e),
        };
        match result {
            Ok(meta) => {
                acked += 1;
                if output == Output::Json {
                    println!(
                        "{}",
                        json!({"line": line, "topic": topic, "partition": meta.partition, "offset": meta.offset})
                    );
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("line {line}: not acknowledged: {e}");
            }
        }
    }
    (acked, failed)
}
