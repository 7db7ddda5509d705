//! The bandwidth cap of a link: a pacer that lets `n` bytes go only once
//! `n / rate` seconds have passed since the previous send was allowed, with
//! no burst credit saved up while idle. Over any window of `T` seconds it
//! lets through at most `rate × T` bytes plus the one send that straddles
//! the window's start, so the link sizes its sends at a twentieth of a
//! second's worth ([`Pacer::chunk_bytes`]) to stay within 1 % over 5 s.

use std::time::Duration;

use tokio::time::Instant;

/// Sends per second a capped link is cut into.
const CHUNKS_PER_S: u64 = 20;

/// Paces a link to `rate` bytes per second; a rate of 0 is no cap.
#[derive(Debug)]
pub struct Pacer {
    rate: u64,
    /// When the next send may start.
    next: Instant,
}

impl Pacer {
    /// A pacer for `rate` bytes per second (0: unlimited).
    pub fn new(rate: u64) -> Pacer {
        Pacer {
            rate,
            next: Instant::now(),
        }
    }

    /// The most stored bytes one send should carry, within `max`.
    pub fn chunk_bytes(&self, max: u32) -> u32 {
        match self.rate {
            0 => max,
            rate => u32::try_from(rate / CHUNKS_PER_S)
                .unwrap_or(u32::MAX)
                .clamp(1, max),
        }
    }

    /// Waits until `bytes` may be sent, and books them.
    pub async fn send(&mut self, bytes: usize) {
        if self.rate == 0 {
            return;
        }
        let at = self.book(Instant::now(), bytes);
        tokio::time::sleep_until(at).await;
    }

    /// Books `bytes` asked for at `now`; returns when they may go.
    fn book(&mut self, now: Instant, bytes: usize) -> Instant {
        // No credit for idle time: a window that starts after a pause sees
        // the same pace as one in a busy stretch.
        let start = self.next.max(now);
        let cost = Duration::from_secs_f64(bytes as f64 / self.rate as f64);
        self.next = start + cost;
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends booked back to back from `start` over `window`: the bytes
    /// whose send time falls inside it.
    fn sent_within(pacer: &mut Pacer, start: Instant, window: Duration, chunk: usize) -> u64 {
        let mut now = start;
        let mut sent = 0;
        loop {
            let at = pacer.book(now, chunk);
            if at > start + window {
                return sent;
            }
            sent += chunk as u64;
            now = at;
        }
    }

    #[test]
    fn pacer_over_five_seconds_sends_no_more_than_the_rate_allows() {
        let rate = 100_000;
        let mut pacer = Pacer::new(rate);
        let chunk = pacer.chunk_bytes(1 << 20) as usize;
        assert_eq!(chunk, 5_000);
        let start = Instant::now();
        let sent = sent_within(&mut pacer, start, Duration::from_secs(5), chunk);
        assert_eq!(sent, rate * 5);
        // After an idle minute, no burst: the next 5 s carry the same.
        let later = start + Duration::from_secs(65);
        let sent = sent_within(&mut pacer, later, Duration::from_secs(5), chunk);
        assert_eq!(sent, rate * 5);
    }

    #[tokio::test]
    async fn pacer_without_a_rate_never_waits() {
        let mut pacer = Pacer::new(0);
        let start = Instant::now();
        pacer.send(usize::MAX).await;
        assert!(start.elapsed() < Duration::from_millis(100));
        assert_eq!(pacer.chunk_bytes(77), 77);
    }
}
