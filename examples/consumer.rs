//! Follows partition 0 of `sensors` from the beginning and prints records
//! as they arrive. Stop it with Ctrl-C.
//!
//! ```sh
//! cargo run -p edgebus-examples --example consumer
//! ```

use edgebus_client::{Client, ClientConfig, Position, SubscribeConfig, Subscription};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let client = Client::connect(ClientConfig::local()?).await?;
    let mut sub = Subscription::start(
        client,
        "sensors",
        0,
        Position::Earliest,
        SubscribeConfig::default(),
    )
    .await?;
    while let Some(record) = sub.next().await {
        let record = record?;
        println!(
            "offset {} key {:?}: {}",
            record.offset,
            record.key.as_deref().map(String::from_utf8_lossy),
            String::from_utf8_lossy(&record.value)
        );
    }
    Ok(())
}
