//! Test plugin (filter): `init` succeeds, `filter` never returns.
//!
//! The broker's tests attach it to check that the per-call fuel or epoch
//! deadline stops a runaway plugin and that the topic's failure policy
//! then applies. Parameters are ignored.

use edgebus_plugin::prelude::*;

/// A filter that spins forever.
pub struct Spin;

impl Filter for Spin {
    fn init(_params: &Params) -> Result<Self, String> {
        Ok(Spin)
    }

    fn filter(&mut self, _record: &Record) -> Result<bool, String> {
        // `black_box` keeps the loop a real computation, so the deadline is
        // what ends the call, not an optimizer that proved it pointless.
        let mut turns: u64 = 0;
        loop {
            turns = std::hint::black_box(turns.wrapping_add(1));
        }
    }
}

export_filter!(Spin);

#[cfg(test)]
mod tests {
    use super::*;
    use edgebus_plugin::testing::FilterHarness;

    #[test]
    fn init_with_any_params_succeeds() {
        assert!(FilterHarness::<Spin>::new(&[]).is_ok());
        assert!(FilterHarness::<Spin>::new(&[("anything", "x")]).is_ok());
    }
}
