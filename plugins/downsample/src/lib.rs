//! `downsample`: keeps one record in N, or one per time window, per key.
//!
//! Parameters, exactly one of:
//!
//! - `every=N` (N ≥ 1): keeps each key's first record, then every Nth
//!   after it; with `every=3`, records 1, 4, 7 and so on.
//! - `window_ms=W` (W ≥ 1): splits time into windows `[k·W, (k+1)·W)`
//!   milliseconds since the epoch, by record timestamp, and keeps each
//!   key's first record in each window. A record from a window before the
//!   key's last kept one arrives late and is dropped.
//!
//! And optionally, with `every`:
//!
//! - `idle_ms=I` (default 3600000, at least 1): a key's count is forgotten
//!   after `I` milliseconds of event time without a record of that key,
//!   so the key's next record is kept as its first.
//!
//! Keyless records all count as one key, the empty one.
//!
//! The per-key position (a count, or the last kept window) lives in the
//! broker's state store rather than in the instance: in a pipeline it then
//! commits with the output, so a retried batch is not counted twice, and it
//! survives restarts and hot swaps. Every entry expires (after `idle_ms`,
//! or two windows of event time after it was written), so state holds only
//! the keys seen recently, not every key ever seen.

use edgebus_plugin::prelude::*;

const PARAMS: &[&str] = &["every", "window_ms", "idle_ms"];

/// How long a key's count is kept without a record of it, unless `idle_ms`
/// says otherwise.
pub const DEFAULT_IDLE_MS: u64 = 3_600_000;

// Each mode keeps its state under its own prefix, so state left by an
// attachment in the other mode is never misread.
const EVERY_PREFIX: &[u8] = b"every/";
const WINDOW_PREFIX: &[u8] = b"window/";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Every { every: u64, idle_ms: u64 },
    WindowMs(i64),
}

/// The filter: one downsampling rule applied per key.
pub struct Downsample {
    mode: Mode,
}

impl Filter for Downsample {
    fn init(params: &Params) -> Result<Self, String> {
        params.reject_unknown(PARAMS)?;
        let idle_ms = params.get_u64("idle_ms")?;
        if idle_ms == Some(0) {
            return Err(at_least_one(params, "idle_ms"));
        }
        let mode = match (params.get_u64("every")?, params.get_i64("window_ms")?) {
            (Some(every), None) => {
                if every == 0 {
                    return Err(at_least_one(params, "every"));
                }
                Mode::Every {
                    every,
                    idle_ms: idle_ms.unwrap_or(DEFAULT_IDLE_MS),
                }
            }
            (None, Some(_)) if idle_ms.is_some() => {
                return Err("`idle_ms` goes with `every`; windows expire by themselves".to_owned());
            }
            (None, Some(window_ms)) => {
                if window_ms < 1 {
                    return Err(at_least_one(params, "window_ms"));
                }
                Mode::WindowMs(window_ms)
            }
            _ => {
                return Err(
                    "set exactly one of `every` (keep 1 in N) or `window_ms` (keep 1 per window)"
                        .to_owned(),
                );
            }
        };
        Ok(Downsample { mode })
    }

    fn filter(&mut self, record: &Record) -> Result<bool, String> {
        let key = record.key.as_deref().unwrap_or_default();
        match self.mode {
            Mode::Every { every, idle_ms } => {
                let state_key = [EVERY_PREFIX, key].concat();
                let seen = state::get_u64(&state_key)?.unwrap_or(0);
                // Stored modulo N, so the count stays bounded; each record
                // of the key moves its expiry on.
                let next = (seen + 1) % every;
                state::set_expiring(&state_key, &next.to_be_bytes(), idle_ms);
                Ok(seen % every == 0)
            }
            Mode::WindowMs(window_ms) => {
                let state_key = [WINDOW_PREFIX, key].concat();
                let window = record.timestamp_ms.div_euclid(window_ms);
                match state::get_i64(&state_key)? {
                    Some(last_kept) if window <= last_kept => Ok(false),
                    _ => {
                        // Kept through the window after this one, so a
                        // record a little late is still recognised.
                        let ttl_ms = (window_ms as u64).saturating_mul(2);
                        state::set_expiring(&state_key, &window.to_be_bytes(), ttl_ms);
                        Ok(true)
                    }
                }
            }
        }
    }
}

export_filter!(Downsample);

fn at_least_one(params: &Params, key: &str) -> String {
    ParamError::invalid(
        key,
        params.get(key).unwrap_or_default(),
        "must be at least 1",
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgebus_plugin::testing::{FilterHarness, run_filter};

    fn at(key: &str, timestamp_ms: i64) -> Record {
        Record::new("v")
            .with_key(key)
            .with_timestamp_ms(timestamp_ms)
    }

    fn init_error(params: &[(&str, &str)]) -> String {
        run_filter::<Downsample>(params, &[]).unwrap_err()
    }

    #[test]
    fn every_with_three_keeps_first_then_every_third() {
        let batch: Vec<Record> = (0..7).map(|i| at("k", i)).collect();
        assert_eq!(
            run_filter::<Downsample>(&[("every", "3")], &batch),
            Ok(vec![true, false, false, true, false, false, true])
        );
    }

    #[test]
    fn every_with_several_keys_counts_each_key() {
        let batch = [at("a", 0), at("b", 0), at("a", 0), at("b", 0), at("a", 0)];
        assert_eq!(
            run_filter::<Downsample>(&[("every", "2")], &batch),
            Ok(vec![true, true, false, false, true])
        );
    }

    #[test]
    fn every_with_keyless_records_shares_empty_key() {
        let batch = [Record::new("1"), Record::new("2"), at("", 0), at("x", 0)];
        assert_eq!(
            run_filter::<Downsample>(&[("every", "3")], &batch),
            Ok(vec![true, false, false, true])
        );
    }

    #[test]
    fn every_across_batches_and_restart_continues_count() {
        let mut harness = FilterHarness::<Downsample>::new(&[("every", "2")]).unwrap();
        assert_eq!(harness.filter(&[at("k", 0)]), Ok(vec![true]));
        harness.restart().unwrap();
        assert_eq!(
            harness.filter(&[at("k", 0), at("k", 0)]),
            Ok(vec![false, true])
        );
    }

    #[test]
    fn window_keeps_first_record_per_key_per_window() {
        let batch = [
            at("a", 1_000),
            at("a", 1_999),
            at("b", 1_500),
            at("a", 2_000),
            at("a", 2_999),
            at("a", 5_000),
        ];
        assert_eq!(
            run_filter::<Downsample>(&[("window_ms", "1000")], &batch),
            Ok(vec![true, false, true, true, false, true])
        );
    }

    #[test]
    fn window_with_late_record_drops_it() {
        let mut harness = FilterHarness::<Downsample>::new(&[("window_ms", "1000")]).unwrap();
        assert_eq!(harness.filter(&[at("a", 5_000)]), Ok(vec![true]));
        assert_eq!(
            harness.filter(&[at("a", 4_000), at("a", 6_000)]),
            Ok(vec![false, true])
        );
    }

    #[test]
    fn window_with_negative_timestamps_uses_floor_windows() {
        let batch = [at("a", -1), at("a", -1_000), at("a", 0)];
        assert_eq!(
            run_filter::<Downsample>(&[("window_ms", "1000")], &batch),
            Ok(vec![true, false, true])
        );
    }

    #[test]
    fn init_with_neither_or_both_modes_fails() {
        let expected =
            "set exactly one of `every` (keep 1 in N) or `window_ms` (keep 1 per window)";
        assert_eq!(init_error(&[]), expected);
        assert_eq!(init_error(&[("every", "2"), ("window_ms", "10")]), expected);
    }

    #[test]
    fn init_with_zero_or_invalid_values_fails() {
        assert_eq!(
            init_error(&[("every", "0")]),
            "parameter `every`: invalid value `0`: must be at least 1"
        );
        assert_eq!(
            init_error(&[("window_ms", "-5")]),
            "parameter `window_ms`: invalid value `-5`: must be at least 1"
        );
        assert_eq!(
            init_error(&[("every", "1.5")]),
            "parameter `every`: invalid value `1.5`: expected an unsigned integer"
        );
    }

    #[test]
    fn init_with_unknown_param_fails() {
        assert_eq!(
            init_error(&[("every", "2"), ("window", "10")]),
            "unknown parameter `window` (accepted: every, window_ms, idle_ms)"
        );
    }

    #[test]
    fn every_forgets_an_idle_key_after_idle_ms() {
        let params = [("every", "3"), ("idle_ms", "100")];
        let mut harness = FilterHarness::<Downsample>::new(&params).unwrap();
        assert_eq!(
            harness.filter(&[at("k", 0), at("k", 50)]),
            Ok(vec![true, false])
        );
        assert_eq!(harness.filter(&[at("k", 149)]), Ok(vec![false]));
        assert_eq!(harness.filter(&[at("k", 300)]), Ok(vec![true]), "forgotten");
        assert_eq!(harness.filter(&[at("j", 1_000)]), Ok(vec![true]));
        assert_eq!(harness.state().len(), 1, "only `j` is kept");
    }

    #[test]
    fn window_state_expires_two_windows_on() {
        let mut harness = FilterHarness::<Downsample>::new(&[("window_ms", "1000")]).unwrap();
        assert_eq!(harness.filter(&[at("a", 1_000)]), Ok(vec![true]));
        assert_eq!(harness.filter(&[at("b", 3_000)]), Ok(vec![true]));
        assert_eq!(harness.state().len(), 1, "`a` expired at 3000");
    }

    #[test]
    fn init_with_idle_ms_and_window_fails() {
        assert_eq!(
            init_error(&[("window_ms", "10"), ("idle_ms", "10")]),
            "`idle_ms` goes with `every`; windows expire by themselves"
        );
    }
}
