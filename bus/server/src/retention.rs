//! The background retention task.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgebus_store::RetentionHold;

use crate::writer::Writer;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Something that needs records retention would delete: edge mirrors and
/// their undelivered records.
pub trait Holder: Send + Sync {
    /// The holds for this pass.
    fn holds(&self) -> Vec<RetentionHold>;
    /// What the pass deleted of them all the same.
    fn dropped(&self, holds: &[RetentionHold]);
}

/// Runs retention every `interval`, inside the writer.
pub async fn run(writer: Writer, holder: Arc<dyn Holder>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (mut batches, mut bytes) = (0, 0);
        // The holds of this tick count what every pass takes from them (a
        // hold's start may have moved on meanwhile: it then keeps more, not
        // less), so the holder hears once per tick.
        let mut holds = holder.holds();
        // A pass deletes one step's worth at most, so appends queued behind
        // it wait that long at worst; the next pass follows them at once
        // while more is due.
        loop {
            match writer.enforce_retention(now_ms(), holds.clone()).await {
                Ok((report, counted)) => {
                    holds = counted;
                    batches += report.batches;
                    bytes += report.bytes;
                    if !report.more {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention failed");
                    break;
                }
            }
        }
        holder.dropped(&holds);
        if batches > 0 {
            tracing::info!(batches, bytes, "retention");
        }
    }
}
