//! Budgets one attachment (a [`Chain`](crate::Chain)) lives within across
//! calls, one-record retries and instance replacements: total state, output
//! per input batch, log lines and bytes per second, and the time its
//! failing calls may burn per second.
//!
//! The per-call limits (deadline, memory cap, state writes per call) stop
//! one call from hurting the broker; a hostile plugin can still stay under
//! each of them and add up: a fresh key per record, many copies per input,
//! a log flood from instances that fail and are replaced. These budgets cap
//! the sums, and each is checked before the memory is spent.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// The budgets of every attachment of an engine; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budgets {
    /// Bytes of keys and values the plugins of one chain may keep in
    /// state, all stages together.
    pub state_max_bytes: usize,
    /// Keys the plugins of one chain may keep in state.
    pub state_max_keys: usize,
    /// A stage may emit at most this many times the bytes (keys, values,
    /// header names and values) of the batch given to the chain…
    pub output_bytes_ratio: usize,
    /// …but always at least this many bytes, so small batches can grow…
    pub output_bytes_floor: usize,
    /// …and never more than this many bytes per batch.
    pub output_max_bytes: usize,
    /// A stage may emit at most this many records per input record.
    pub output_records_per_input: usize,
    /// Headers one emitted record may have.
    pub output_max_headers: usize,
    /// Log lines (the `log` import, stdout and stderr, and the host's own
    /// lines about the attachment's failures) per second, sustained.
    pub log_lines_per_second: u32,
    /// Log bytes per second, sustained.
    pub log_bytes_per_second: usize,
    /// CPU time per second, sustained, that calls ending in a failure
    /// (deadline, trap, memory cap, budget breach, rejection) may take
    /// (wall time where the platform cannot tell a thread's CPU time).
    /// Once five seconds' worth is spent, the attachment's batches fail
    /// at once with [`Breach::FailingTime`], without a call, until it
    /// refills. Every time a stage's failing calls spend it, the rate
    /// halves, down to 1/64 of this; once that stage's next call succeeds
    /// it is restored. A plugin that burns its deadline on every call thus
    /// costs the broker a few hundred ms, then about 1.5 ms per second
    /// (one 50 ms call every half minute), not a core. A call that missed
    /// its deadline because the broker's CPU was busy elsewhere used
    /// little CPU and costs little. 0 sets no limit.
    pub failing_ms_per_second: u32,
}

/// Seconds of a sustained rate (log lines, log bytes, failing time) a
/// quiet attachment may spend at once.
const BURST_SECONDS: f64 = 5.0;

/// A token bucket: `rate` tokens a second, holding at most
/// [`BURST_SECONDS`] worth. It may go below zero, for a cost known only
/// once it was spent.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    left: f64,
    refilled_at: Instant,
}

impl Bucket {
    fn full(rate: f64) -> Bucket {
        Bucket {
            rate,
            left: rate * BURST_SECONDS,
            refilled_at: Instant::now(),
        }
    }

    /// Adds what the time since the last refill earned; returns what is
    /// left.
    fn refill(&mut self, now: Instant) -> f64 {
        let elapsed = now.duration_since(self.refilled_at).as_secs_f64();
        self.refilled_at = now;
        self.left = (self.left + elapsed * self.rate).min(self.rate * BURST_SECONDS);
        self.left
    }
}

impl Default for Budgets {
    /// Sized for a gateway with 512 MiB of RAM running a handful of
    /// attachments: 16 MiB of state and 32 MiB of output per batch each.
    fn default() -> Budgets {
        Budgets {
            state_max_bytes: 16 << 20,
            state_max_keys: 100_000,
            output_bytes_ratio: 16,
            output_bytes_floor: 64 << 10,
            output_max_bytes: 32 << 20,
            output_records_per_input: 1024,
            output_max_headers: 64,
            log_lines_per_second: 20,
            log_bytes_per_second: 16 << 10,
            failing_ms_per_second: 100,
        }
    }
}

impl Budgets {
    /// The output one stage may produce from a chain input of `records`
    /// records and `bytes` bytes.
    pub(crate) fn output_for(&self, records: usize, bytes: usize) -> OutputBudget {
        let records = records.saturating_mul(self.output_records_per_input);
        let bytes = bytes
            .saturating_mul(self.output_bytes_ratio)
            .max(self.output_bytes_floor)
            .min(self.output_max_bytes);
        OutputBudget {
            records_left: records,
            records_max: records,
            bytes_left: bytes,
            bytes_max: bytes,
        }
    }
}

/// Which budget or limit a plugin went over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Breach {
    /// A state write would take the chain's state past its byte budget.
    #[error("state would exceed {max} bytes")]
    StateBytes {
        /// The budget.
        max: usize,
    },
    /// A state write would take the chain's state past its key budget.
    #[error("state would exceed {max} keys")]
    StateKeys {
        /// The budget.
        max: usize,
    },
    /// A stage emitted more records for a batch than its budget.
    #[error("output would exceed {max} records for the batch")]
    OutputRecords {
        /// The budget for this batch.
        max: usize,
    },
    /// A stage emitted more bytes for a batch than its budget.
    #[error("output would exceed {max} bytes for the batch")]
    OutputBytes {
        /// The budget for this batch.
        max: usize,
    },
    /// An output record is larger than the destination allows.
    #[error("output record of {size} bytes exceeds the limit of {max} bytes")]
    RecordBytes {
        /// The record's encoded size.
        size: usize,
        /// The destination's `max.message.bytes`.
        max: usize,
    },
    /// An output record has more headers than the destination allows.
    #[error("output record has {count} headers, more than the limit of {max}")]
    Headers {
        /// Its header count.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The attachment's failing calls used up their time budget: the
    /// batch failed without a call.
    #[error("failing calls used more than {per_second_ms} ms per second")]
    FailingTime {
        /// The sustained budget, in milliseconds per second.
        per_second_ms: u32,
    },
    /// The outputs of the batch up to this record would not fit in one
    /// stored batch that a fetch can serve.
    #[error("output of the batch would exceed {max} bytes, the largest batch the topic serves")]
    BatchBytes {
        /// The limit.
        max: usize,
    },
}

/// What one stage may still emit for the batch in hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutputBudget {
    records_left: usize,
    records_max: usize,
    bytes_left: usize,
    bytes_max: usize,
}

impl OutputBudget {
    /// Takes `records` records of `bytes` bytes from the budget, or says
    /// which part of it they would break (and takes nothing).
    pub(crate) fn spend(&mut self, records: usize, bytes: usize) -> Result<(), Breach> {
        if records > self.records_left {
            return Err(Breach::OutputRecords {
                max: self.records_max,
            });
        }
        if bytes > self.bytes_left {
            return Err(Breach::OutputBytes {
                max: self.bytes_max,
            });
        }
        self.records_left -= records;
        self.bytes_left -= bytes;
        Ok(())
    }

    /// Records and bytes still to spend.
    pub(crate) fn room(&self) -> (u64, u64) {
        (self.records_left as u64, self.bytes_left as u64)
    }
}

/// Keys and bytes of keys and values held in state; signed, as a change
/// may shrink it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateUsage {
    /// Bytes of keys plus values.
    pub bytes: i64,
    /// Keys.
    pub keys: i64,
}

impl StateUsage {
    fn plus(self, other: StateUsage) -> StateUsage {
        StateUsage {
            bytes: self.bytes + other.bytes,
            keys: self.keys + other.keys,
        }
    }

    fn minus(self, other: StateUsage) -> StateUsage {
        StateUsage {
            bytes: self.bytes - other.bytes,
            keys: self.keys - other.keys,
        }
    }
}

/// The state usage of a whole chain: what its stores hold, plus the
/// changes of the batch in progress that have not been committed yet.
#[derive(Debug)]
pub(crate) struct StateLedger {
    max_bytes: i64,
    max_keys: i64,
    committed: StateUsage,
    pending: StateUsage,
}

/// A ledger shared by the stages of one chain.
pub(crate) type SharedLedger = Arc<Mutex<StateLedger>>;

impl StateLedger {
    pub(crate) fn shared(budgets: &Budgets) -> SharedLedger {
        let clamp = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        Arc::new(Mutex::new(StateLedger {
            max_bytes: clamp(budgets.state_max_bytes),
            max_keys: clamp(budgets.state_max_keys),
            committed: StateUsage::default(),
            pending: StateUsage::default(),
        }))
    }

    /// Counts what a store held before this chain wrote to it.
    pub(crate) fn adopt(&mut self, usage: StateUsage) {
        self.committed = self.committed.plus(usage);
    }

    /// Records a pending change, unless growing the state by it would go
    /// over a budget. Shrinking is always allowed.
    pub(crate) fn charge(&mut self, change: StateUsage) -> Result<(), Breach> {
        let after = self.committed.plus(self.pending).plus(change);
        if change.keys > 0 && after.keys > self.max_keys {
            return Err(Breach::StateKeys {
                max: self.max_keys as usize,
            });
        }
        if change.bytes > 0 && after.bytes > self.max_bytes {
            return Err(Breach::StateBytes {
                max: self.max_bytes as usize,
            });
        }
        self.pending = self.pending.plus(change);
        Ok(())
    }

    /// Forgets pending changes that were dropped.
    pub(crate) fn drop_pending(&mut self, change: StateUsage) {
        self.pending = self.pending.minus(change);
    }

    /// Moves pending changes that reached the store to the committed total.
    pub(crate) fn commit(&mut self, change: StateUsage) {
        self.pending = self.pending.minus(change);
        self.committed = self.committed.plus(change);
    }

    /// The committed usage.
    pub(crate) fn committed(&self) -> StateUsage {
        self.committed
    }

    /// Bytes and keys the state may still grow by, pending changes
    /// counted.
    pub(crate) fn room(&self) -> (u64, u64) {
        let used = self.committed.plus(self.pending);
        let left = |max: i64, used: i64| u64::try_from(max - used).unwrap_or(0);
        (
            left(self.max_bytes, used.bytes),
            left(self.max_keys, used.keys),
        )
    }
}

/// Locks a ledger; a panic while it was held leaves numbers that are at
/// worst off by one change, so poisoning is ignored.
pub(crate) fn ledger(ledger: &SharedLedger) -> std::sync::MutexGuard<'_, StateLedger> {
    ledger.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Token buckets for log lines and bytes, shared by every instance a chain
/// creates, so replacing a failed instance does not refill them.
#[derive(Debug)]
pub(crate) struct LogBudget {
    lines: Bucket,
    bytes: Bucket,
    /// Lines dropped since the last one that got through.
    suppressed: u64,
    /// Lines written since the budget was made.
    pub(crate) written_total: u64,
    /// Lines dropped since the budget was made.
    pub(crate) dropped_total: u64,
}

/// A log budget shared by the instances of one chain.
pub(crate) type SharedLogBudget = Arc<Mutex<LogBudget>>;

impl LogBudget {
    pub(crate) fn shared(budgets: &Budgets) -> SharedLogBudget {
        Arc::new(Mutex::new(LogBudget::new(budgets)))
    }

    pub(crate) fn new(budgets: &Budgets) -> LogBudget {
        LogBudget {
            lines: Bucket::full(f64::from(budgets.log_lines_per_second)),
            bytes: Bucket::full(budgets.log_bytes_per_second as f64),
            suppressed: 0,
            written_total: 0,
            dropped_total: 0,
        }
    }

    /// Whether a line of `bytes` bytes may be written now. On `Some(n)`,
    /// the caller writes the line and reports that `n` earlier lines were
    /// dropped.
    pub(crate) fn admit(&mut self, bytes: usize) -> Option<u64> {
        let now = Instant::now();
        let (lines, bytes_left) = (self.lines.refill(now), self.bytes.refill(now));
        if lines < 1.0 || bytes_left < bytes as f64 {
            self.suppressed += 1;
            self.dropped_total += 1;
            return None;
        }
        self.lines.left -= 1.0;
        self.bytes.left -= bytes as f64;
        self.written_total += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Locks a log budget; poisoning costs at most one line's accounting.
pub(crate) fn log_budget(budget: &SharedLogBudget) -> std::sync::MutexGuard<'_, LogBudget> {
    budget.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How many times the failing-time rate halves while calls keep failing,
/// at most (to 1/64 of its setting): see
/// [`Budgets::failing_ms_per_second`].
const MAX_BACKOFF_STEPS: u32 = 6;

/// A token bucket of CPU time for failing calls, shared by the stages
/// and instances of one chain, whose rate backs off while a stage's calls
/// keep failing.
#[derive(Debug)]
pub(crate) struct FailingTime {
    per_second_ms: u32,
    /// Per stage: how many times in a row its failing calls spent the
    /// budget (each halves the rate, see [`MAX_BACKOFF_STEPS`]).
    backoff: Vec<u32>,
    /// Seconds of failing calls that may still run; below zero after a
    /// call took more than was left, as its time is known only once it
    /// failed.
    seconds: Bucket,
}

/// A failing-time budget shared by the stages of one chain.
pub(crate) type SharedFailingTime = Arc<Mutex<FailingTime>>;

impl FailingTime {
    pub(crate) fn shared(budgets: &Budgets) -> SharedFailingTime {
        Arc::new(Mutex::new(FailingTime::new(budgets)))
    }

    fn new(budgets: &Budgets) -> FailingTime {
        let per_second_ms = budgets.failing_ms_per_second;
        FailingTime {
            per_second_ms,
            backoff: Vec::new(),
            seconds: Bucket::full(f64::from(per_second_ms) / 1000.0),
        }
    }

    /// `Err` while the budget is spent: the call must not be made.
    pub(crate) fn admit(&mut self) -> Result<(), Breach> {
        if self.per_second_ms == 0 || self.seconds.refill(Instant::now()) > 0.0 {
            Ok(())
        } else {
            Err(Breach::FailingTime {
                per_second_ms: self.per_second_ms,
            })
        }
    }

    /// Charges the time of a call of `stage` that failed. The call that
    /// spends the budget halves its rate: a plugin that fails on every
    /// call is let run less and less often.
    pub(crate) fn charge(&mut self, stage: usize, spent: std::time::Duration) {
        let before = self.seconds.refill(Instant::now());
        self.seconds.left -= spent.as_secs_f64();
        if before > 0.0 && self.seconds.left <= 0.0 {
            if self.backoff.len() <= stage {
                self.backoff.resize(stage + 1, 0);
            }
            self.backoff[stage] += 1;
            self.set_rate();
        }
    }

    /// A call of `stage` succeeded: that plugin works, and no longer holds
    /// the rate down (another stage still failing may).
    pub(crate) fn succeeded(&mut self, stage: usize) {
        if let Some(level) = self.backoff.get_mut(stage)
            && *level > 0
        {
            *level = 0;
            self.set_rate();
        }
    }

    /// The full rate halved once per back-off step of the stage furthest
    /// backed off.
    fn set_rate(&mut self) {
        let full = f64::from(self.per_second_ms) / 1000.0;
        let steps = self.backoff.iter().copied().max().unwrap_or(0);
        self.seconds.rate = full / f64::from(1u32 << steps.min(MAX_BACKOFF_STEPS));
    }
}

/// Locks a failing-time budget; poisoning costs at most one call's
/// accounting.
pub(crate) fn failing_time(budget: &SharedFailingTime) -> std::sync::MutexGuard<'_, FailingTime> {
    budget.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_budget_ratio_floor_and_ceiling() {
        let budgets = Budgets {
            output_bytes_ratio: 16,
            output_bytes_floor: 100,
            output_max_bytes: 1000,
            output_records_per_input: 2,
            ..Budgets::default()
        };
        let mut small = budgets.output_for(1, 1);
        assert_eq!(small.spend(1, 100), Ok(()));
        assert_eq!(small.spend(1, 1), Err(Breach::OutputBytes { max: 100 }));
        let mut large = budgets.output_for(3, 500);
        assert_eq!(large.spend(1, 1001), Err(Breach::OutputBytes { max: 1000 }));
        assert_eq!(large.spend(7, 1), Err(Breach::OutputRecords { max: 6 }));
        assert_eq!(large.spend(6, 1000), Ok(()));
    }

    #[test]
    fn state_ledger_counts_pending_and_committed_against_the_budget() {
        let budgets = Budgets {
            state_max_bytes: 10,
            state_max_keys: 2,
            ..Budgets::default()
        };
        let shared = StateLedger::shared(&budgets);
        let mut l = ledger(&shared);
        let add = |bytes, keys| StateUsage { bytes, keys };
        assert_eq!(l.charge(add(6, 1)), Ok(()));
        assert_eq!(l.charge(add(6, 0)), Err(Breach::StateBytes { max: 10 }));
        l.commit(add(6, 1));
        assert_eq!(l.charge(add(1, 1)), Ok(()));
        assert_eq!(l.charge(add(1, 1)), Err(Breach::StateKeys { max: 2 }));
        l.drop_pending(add(1, 1));
        assert_eq!(l.charge(add(-6, -1)), Ok(()), "shrinking always passes");
        assert_eq!(l.committed(), add(6, 1));
    }

    #[test]
    fn failing_time_admits_a_burst_then_refuses_until_it_refills() {
        let budgets = Budgets {
            failing_ms_per_second: 100,
            ..Budgets::default()
        };
        let mut t = FailingTime::new(&budgets);
        // Five seconds' worth, 500 ms: nine 60 ms failures get their call
        // (the ninth takes the budget below zero).
        let mut admitted = 0;
        while t.admit().is_ok() {
            admitted += 1;
            t.charge(0, std::time::Duration::from_millis(60));
        }
        assert_eq!(admitted, 9);
        assert_eq!(t.admit(), Err(Breach::FailingTime { per_second_ms: 100 }));
        // Spent: the rate halved to 50 ms per second, so a second's refill
        // pays the 40 ms debt of the ninth call and leaves room again.
        t.seconds.refilled_at -= std::time::Duration::from_millis(1000);
        assert!(t.admit().is_ok());
        // Each failure that spends it halves the rate, down to 1/64 (1.56
        // ms per second: a 60 ms failure every 38 s).
        for _ in 0..10 {
            t.charge(1, std::time::Duration::from_millis(60));
            t.seconds.left = 0.001;
        }
        assert!((t.seconds.rate - 0.1 / 64.0).abs() < 1e-9);
        // Another stage's success does not lift it; the failing stage's
        // own does.
        t.succeeded(0);
        assert!((t.seconds.rate - 0.1 / 64.0).abs() < 1e-9);
        t.succeeded(1);
        assert!((t.seconds.rate - 0.1).abs() < 1e-9);
        // 0: no limit.
        let mut off = FailingTime::new(&Budgets {
            failing_ms_per_second: 0,
            ..Budgets::default()
        });
        off.charge(0, std::time::Duration::from_secs(10));
        assert!(off.admit().is_ok());
    }

    #[test]
    fn log_budget_limits_lines_and_bytes() {
        let budgets = Budgets {
            log_lines_per_second: 2,
            log_bytes_per_second: 100,
            ..Budgets::default()
        };
        let mut lines = LogBudget::new(&budgets);
        let admitted = (0..100).filter(|_| lines.admit(1).is_some()).count();
        assert_eq!(admitted, 10, "a burst of five seconds of lines");
        let mut bytes = LogBudget::new(&budgets);
        assert!(bytes.admit(400).is_some());
        assert!(bytes.admit(200).is_none(), "over the 500-byte burst");
        assert_eq!(bytes.dropped_total, 1);
        assert_eq!(bytes.admit(50), Some(1), "reports the dropped line");
    }
}
