//! The background retention task.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::writer::Writer;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs retention every `interval`, inside the writer.
pub async fn run(writer: Writer, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match writer.enforce_retention(now_ms()).await {
            Ok(report) if report.batches > 0 => {
                tracing::info!(batches = report.batches, bytes = report.bytes, "retention");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention failed"),
        }
    }
}
