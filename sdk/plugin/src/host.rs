//! The seam between the SDK and the broker: the `log` and `state` imports.
//!
//! In a guest (`wasm32`) each function calls the matching WIT import. In a
//! native build there is no broker, so a per-thread [`NativeHost`] stands
//! in: an in-memory state map and a captured log. That is what lets a
//! plugin's unit tests run under plain `cargo test`; [`crate::testing`]
//! gives each test harness its own `NativeHost`.

use crate::log::Level;

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::Level;
    use crate::bindings::filter::edgebus::plugin::{log, state};

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
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::Level;
    use crate::testing::LogLine;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// What the broker would hold for one plugin instance.
    #[derive(Debug, Default)]
    pub(crate) struct NativeHost {
        pub(crate) state: BTreeMap<Vec<u8>, Vec<u8>>,
        pub(crate) logs: Vec<LogLine>,
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
        CURRENT.with_borrow_mut(|host| host.state.insert(key.to_vec(), value.to_vec()));
    }

    pub(crate) fn state_delete(key: &[u8]) {
        CURRENT.with_borrow_mut(|host| host.state.remove(key));
    }
}

pub(crate) use imp::*;
