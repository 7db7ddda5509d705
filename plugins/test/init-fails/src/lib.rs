//! Test plugin (filter): `init` always fails.
//!
//! The broker's tests attach it to check that a failed `init` is reported
//! to the operator and leaves the plugin unattached.

use edgebus_plugin::prelude::*;

/// The message `init` returns.
pub const MESSAGE: &str = "init failed: this test plugin always refuses to start";

/// A filter that cannot be attached.
pub struct InitFails;

impl Filter for InitFails {
    fn init(_params: &Params) -> Result<Self, String> {
        Err(MESSAGE.to_owned())
    }

    fn filter(&mut self, _record: &Record) -> Result<bool, String> {
        Err("init-fails: filter runs only after a successful init".to_owned())
    }
}

export_filter!(InitFails);

#[cfg(test)]
mod tests {
    use super::*;
    use edgebus_plugin::testing::run_filter;

    #[test]
    fn init_with_any_params_fails_with_message() {
        assert_eq!(run_filter::<InitFails>(&[], &[]), Err(MESSAGE.to_owned()));
        assert_eq!(
            run_filter::<InitFails>(&[("k", "v")], &[]),
            Err(MESSAGE.to_owned())
        );
    }
}
