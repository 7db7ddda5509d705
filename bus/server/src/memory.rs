//! Gives the memory a load freed back to the system once the broker is
//! quiet.
//!
//! After the first large buffer is freed, glibc raises its mmap threshold,
//! so from then on produce and fetch buffers (128 KiB to a few MiB) come
//! from the per-thread heaps, and what they free stays there: a catch-up
//! read of 200,000 KiB records left 80–95 MiB resident where 40 MiB are in
//! use. Fixing the thresholds instead made every such buffer an mmap with
//! its page faults and cost 20–35 % of produce and read throughput, so
//! the heaps are trimmed when traffic stops, where it costs nothing.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;

/// How often traffic is looked at. A trim follows the first look that
/// finds none since the look before, so it comes 2–4 s after a load ends.
const LOOK_EVERY: Duration = Duration::from_secs(2);

/// Decides from successive readings of the traffic counter when to trim:
/// once per quiet spell, never while records move.
#[derive(Debug, Default)]
struct Quiet {
    last: u64,
    trimmed: bool,
}

impl Quiet {
    /// `moved`: bytes appended and read so far.
    fn trim_now(&mut self, moved: u64) -> bool {
        if moved != self.last {
            self.last = moved;
            self.trimmed = false;
            return false;
        }
        !std::mem::replace(&mut self.trimmed, true)
    }
}

/// Runs until aborted, trimming the heaps once after each load.
pub(crate) async fn trim_when_quiet(metrics: Arc<Metrics>) {
    let mut look = tokio::time::interval(LOOK_EVERY);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut quiet = Quiet::default();
    loop {
        look.tick().await;
        if quiet.trim_now(metrics.traffic.moved()) {
            // It walks every arena under its lock: off the async workers.
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}

/// `malloc_trim`, for which libc has no safe wrapper.
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim takes each arena's lock itself and only hands
    // free pages back to the kernel; no pointer of ours is touched.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(test)]
mod tests {
    use super::Quiet;

    #[test]
    fn trims_once_per_quiet_spell_and_never_while_traffic_moves() {
        let mut q = Quiet::default();
        // Quiet from the start: one trim, then none while it stays quiet.
        assert!(q.trim_now(0));
        assert!(!q.trim_now(0));
        // A load: no trim while the counter moves.
        assert!(!q.trim_now(10));
        assert!(!q.trim_now(25));
        // The load ends: one trim at the first look without traffic.
        assert!(q.trim_now(25));
        assert!(!q.trim_now(25));
        // Another load, another trim after it.
        assert!(!q.trim_now(40));
        assert!(q.trim_now(40));
    }
}
