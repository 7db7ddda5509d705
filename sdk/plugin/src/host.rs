//! The seam between the SDK and the broker: the `log`, `state` and
//! `budget` imports.
//!
//! In a guest (`wasm32`) each function calls the matching WIT import. In a
//! native build there is no broker, so a per-thread [`NativeHost`] stands
//! in: an in-memory state map with expiry by event time, and a captured
//! log. That is what lets a
//! plugin's unit tests run under plain `cargo test`; [`crate::testing`]
//! gives each test harness its own `NativeHost`.

use crate::log::Level;

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::Level;
    use crate::bindings::filter::edgebus::plugin::{budget, log, state};

    pub(crate) fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => log::Level::Trace,
            Level::Debug => log::Level::Debug,
            Level::Info => log::Level::Info,
            Level::Warn => log::Level::Warn,
            Level::Error => log::Level::Error,
        };
        log::log(level, message);
    }

    pub(crate) fn state_get(key: &[u8]) -> Option<Vec<u8>> {
        state::get(key)
    }

    pub(crate) fn state_set(key: &[u8], value: &[u8]) {
        state::set(key, value);
    }

    pub(crate) fn state_delete(key: &[u8]) {
        state::delete(key);
    }

    pub(crate) fn state_set_expiring(key: &[u8], value: &[u8], ttl_ms: u64) {
        state::set_expiring(key, value, ttl_ms);
    }

    pub(crate) fn state_list(
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: u32,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        state::list(prefix, after, limit)
            .into_iter()
            .map(|entry| (entry.key, entry.value))
            .collect()
    }

    pub(crate) fn budget_room() -> crate::budget::Room {
        let room = budget::remaining();
        crate::budget::Room {
            state_bytes: room.state_bytes,
            state_keys: room.state_keys,
            output_records: room.output_records,
            output_bytes: room.output_bytes,
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::Level;
    use crate::testing::LogLine;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// The most entries one `list` returns, as in the broker.
    const LIST_MAX_ENTRIES: usize = 1000;

    /// What the broker would hold for one plugin instance.
    #[derive(Debug, Default)]
    pub(crate) struct NativeHost {
        pub(crate) state: BTreeMap<Vec<u8>, Vec<u8>>,
        /// When each expiring key expires, in event time.
        pub(crate) expiry: BTreeMap<Vec<u8>, i64>,
        /// Event time: the largest record timestamp handed over so far.
        pub(crate) now_ms: i64,
        pub(crate) logs: Vec<LogLine>,
    }

    impl NativeHost {
        /// Moves event time to `timestamp_ms` (never back) and removes the
        /// keys that have expired, as the broker does before a call.
        pub(crate) fn advance(&mut self, timestamp_ms: Option<i64>) {
            if let Some(timestamp_ms) = timestamp_ms {
                self.now_ms = self.now_ms.max(timestamp_ms);
            }
            let now_ms = self.now_ms;
            let expired: Vec<Vec<u8>> = self
                .expiry
                .iter()
                .filter(|&(_, &at)| at <= now_ms)
                .map(|(key, _)| key.clone())
                .collect();
            for key in expired {
                self.expiry.remove(&key);
                self.state.remove(&key);
            }
        }
    }

    thread_local! {
        // Per thread, because the test runner gives each test its own thread:
        // tests never see each other's state.
        static CURRENT: RefCell<NativeHost> = RefCell::new(NativeHost::default());
    }

    /// Runs `f` with `host` as the current host, then takes it back, even if
    /// `f` panics.
    pub(crate) fn with_host<R>(host: &mut NativeHost, f: impl FnOnce() -> R) -> R {
        struct Restore<'a>(&'a mut NativeHost);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                CURRENT.with_borrow_mut(|current| std::mem::swap(current, self.0));
            }
        }
        CURRENT.with_borrow_mut(|current| std::mem::swap(current, host));
        let _restore = Restore(host);
        f()
    }

    pub(crate) fn log(level: Level, message: &str) {
        // Printed too, so a failing test's captured output shows the log.
        eprintln!("[{level}] {message}");
        CURRENT.with_borrow_mut(|host| {
            host.logs.push(LogLine {
                level,
                message: message.to_owned(),
            })
        });
    }

    pub(crate) fn state_get(key: &[u8]) -> Option<Vec<u8>> {
        CURRENT.with_borrow(|host| host.state.get(key).cloned())
    }

    pub(crate) fn state_set(key: &[u8], value: &[u8]) {
        CURRENT.with_borrow_mut(|host| {
            host.expiry.remove(key);
            host.state.insert(key.to_vec(), value.to_vec())
        });
    }

    pub(crate) fn state_delete(key: &[u8]) {
        CURRENT.with_borrow_mut(|host| {
            host.expiry.remove(key);
            host.state.remove(key)
        });
    }

    pub(crate) fn state_set_expiring(key: &[u8], value: &[u8], ttl_ms: u64) {
        CURRENT.with_borrow_mut(|host| {
            let ttl_ms = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
            let at = host.now_ms.saturating_add(ttl_ms);
            host.expiry.insert(key.to_vec(), at);
            host.state.insert(key.to_vec(), value.to_vec())
        });
    }

    pub(crate) fn state_list(
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: u32,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let limit = (limit as usize).min(LIST_MAX_ENTRIES);
        CURRENT.with_borrow(|host| {
            host.state
                .range(prefix.to_vec()..)
                .take_while(|(key, _)| key.starts_with(prefix))
                .filter(|(key, _)| after.is_none_or(|after| key.as_slice() > after))
                .take(limit)
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect()
        })
    }

    /// Natively nothing is budgeted: every room is unlimited.
    pub(crate) fn budget_room() -> crate::budget::Room {
        crate::budget::Room {
            state_bytes: u64::MAX,
            state_keys: u64::MAX,
            output_records: u64::MAX,
            output_bytes: u64::MAX,
        }
    }
}

pub(crate) use imp::*;
