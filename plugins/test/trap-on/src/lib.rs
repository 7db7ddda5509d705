//! Test plugin (filter): keeps every record, but panics, which traps the
//! instance, on a record whose value contains the bytes of parameter
//! `needle` (default `boom`).
//!
//! The broker's tests produce one poisoned record among good ones to check
//! the failure policies: `skip`, `dead-letter` and `halt`. Other parameters
//! are ignored.

use edgebus_plugin::prelude::*;

/// The needle when no `needle` parameter is given.
pub const DEFAULT_NEEDLE: &str = "boom";

/// A filter that traps on a chosen byte string.
pub struct TrapOn {
    needle: Vec<u8>,
}

impl Filter for TrapOn {
    fn init(params: &Params) -> Result<Self, String> {
        let needle = params.get("needle").unwrap_or(DEFAULT_NEEDLE);
        if needle.is_empty() {
            return Err(ParamError::invalid("needle", needle, "must not be empty").into());
        }
        Ok(TrapOn {
            needle: needle.as_bytes().to_vec(),
        })
    }

    fn filter(&mut self, record: &Record) -> Result<bool, String> {
        if record
            .value
            .windows(self.needle.len())
            .any(|window| window == self.needle)
        {
            panic!(
                "trap-on: record value contains `{}`",
                self.needle.escape_ascii()
            );
        }
        Ok(true)
    }
}

export_filter!(TrapOn);

#[cfg(test)]
mod tests {
    use super::*;
    use edgebus_plugin::testing::run_filter;

    #[test]
    fn filter_without_needle_keeps_record() {
        let mask = run_filter::<TrapOn>(&[], &[Record::new("fine"), Record::new("")]);
        assert_eq!(mask, Ok(vec![true, true]));
    }

    #[test]
    #[should_panic(expected = "record value contains `boom`")]
    fn filter_with_default_needle_panics() {
        let _ = run_filter::<TrapOn>(&[], &[Record::new("a boom here")]);
    }

    #[test]
    #[should_panic(expected = "record value contains `x\\x00`")]
    fn filter_with_custom_needle_panics() {
        let _ = run_filter::<TrapOn>(&[("needle", "x\0")], &[Record::new("ax\0b")]);
    }

    #[test]
    fn filter_with_custom_needle_ignores_default() {
        let mask = run_filter::<TrapOn>(&[("needle", "bad")], &[Record::new("boom")]);
        assert_eq!(mask, Ok(vec![true]));
    }

    #[test]
    fn init_with_empty_needle_fails() {
        let error = run_filter::<TrapOn>(&[("needle", "")], &[]).unwrap_err();
        assert_eq!(
            error,
            "parameter `needle`: invalid value ``: must not be empty"
        );
    }
}
