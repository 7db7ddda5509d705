//! Sends ten keyed sensor readings and prints where each was stored.
//!
//! ```sh
//! edgebus serve &                     # in another terminal
//! edgebus topic create sensors --partitions 3
//! cargo run -p edgebus-examples --example producer
//! ```
//!
//! `EDGEBUS_BROKER` and `EDGEBUS_CA` override the local broker and its CA.

use edgebus_client::{Client, ClientConfig, Producer, ProducerConfig, Record};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let client = Client::connect(ClientConfig::local()?).await?;
    let producer = Producer::new(client, ProducerConfig::default()).await?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let mut acks = Vec::new();
    for i in 0..10 {
        let sensor = format!("sensor-{}", i % 3);
        let reading = format!(r#"{{"sensor":"{sensor}","celsius":{}}}"#, 20 + i);
        let record = Record::new(reading, now_ms).with_key(sensor);
        acks.push(producer.send("sensors", record).await?);
    }
    producer.flush().await?;
    for ack in acks {
        let meta = ack.await?;
        println!(
            "stored in partition {} at offset {:?}",
            meta.partition, meta.offset
        );
    }
    Ok(())
}
