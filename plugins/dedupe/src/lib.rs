//! `dedupe`: drops a record whose identity was already kept within a time
//! window.
//!
//! Parameters:
//!
//! - `window_ms` (default 60000, at least 1): how long a kept record's
//!   identity suppresses others, by record timestamp.
//! - `field` (optional): a dotted path (see [`FieldPath`]); the identity is
//!   that JSON field's value instead of the record key. Values compare as
//!   serialized JSON, so `42` and `"42"` are different identities.
//!
//! A record is a duplicate when a record with the same identity was kept
//! less than `window_ms` before or after it. Duplicates are dropped and do
//! not extend the window: a key repeated every second with a one-minute
//! window is kept once a minute. A record without an identity (keyless; or,
//! with `field`, not JSON or without the field) is always kept, as there is
//! nothing to compare it with.
//!
//! The last kept timestamp per identity lives in the broker's state store,
//! so it survives restarts (in a pipeline it commits with the output, on
//! an ingest chain it is stored after the records). Each entry expires
//! `window_ms` of event time (the newest record timestamp the attachment
//! has seen) after it was written, so state holds only the identities
//! kept within about the last window, however many identities pass over
//! time. A record arriving more than a window behind the newest one may
//! find its identity forgotten and be kept.

use edgebus_plugin::prelude::*;

const PARAMS: &[&str] = &["window_ms", "field"];

/// The window when no `window_ms` parameter is given.
pub const DEFAULT_WINDOW_MS: u64 = 60_000;

// Identities from keys and from fields are kept apart, so state left by an
// attachment with the other setting is never misread.
const KEY_PREFIX: &[u8] = b"key/";
const FIELD_PREFIX: &[u8] = b"field/";

/// The filter: a window and where identities come from.
pub struct Dedupe {
    window_ms: u64,
    field: Option<FieldPath>,
}

impl Dedupe {
    /// The state key for `record`'s identity, if it has one.
    fn state_key(&self, record: &Record) -> Option<Vec<u8>> {
        match &self.field {
            None => record.key.as_deref().map(|key| [KEY_PREFIX, key].concat()),
            Some(field) => {
                let document = record.json().ok()?;
                let identity = field.get(&document)?.to_string();
                Some([FIELD_PREFIX, identity.as_bytes()].concat())
            }
        }
    }
}

impl Filter for Dedupe {
    fn init(params: &Params) -> Result<Self, String> {
        params.reject_unknown(PARAMS)?;
        let window_ms = params.get_u64("window_ms")?.unwrap_or(DEFAULT_WINDOW_MS);
        if window_ms == 0 {
            let text = params.get("window_ms").unwrap_or_default();
            return Err(ParamError::invalid("window_ms", text, "must be at least 1").into());
        }
        let field = params
            .get("field")
            .map(|text| {
                FieldPath::parse(text).map_err(|error| ParamError::invalid("field", text, error))
            })
            .transpose()?;
        Ok(Dedupe { window_ms, field })
    }

    fn filter(&mut self, record: &Record) -> Result<bool, String> {
        let Some(state_key) = self.state_key(record) else {
            return Ok(true);
        };
        let timestamp_ms = record.timestamp_ms;
        match state::get_i64(&state_key)? {
            Some(last_kept_ms) if timestamp_ms.abs_diff(last_kept_ms) < self.window_ms => Ok(false),
            // A late record kept far behind the last one leaves the window
            // where the newest kept record put it.
            Some(last_kept_ms) if last_kept_ms > timestamp_ms => Ok(true),
            _ => {
                // Past the window after the newest record seen, this entry
                // can no longer drop a record that is in time: it expires.
                state::set_expiring(&state_key, &timestamp_ms.to_be_bytes(), self.window_ms);
                Ok(true)
            }
        }
    }
}

export_filter!(Dedupe);

#[cfg(test)]
mod tests {
    use super::*;
    use edgebus_plugin::testing::{FilterHarness, run_filter};

    fn at(key: &str, timestamp_ms: i64) -> Record {
        Record::new("v")
            .with_key(key)
            .with_timestamp_ms(timestamp_ms)
    }

    fn json_at(value: &str, timestamp_ms: i64) -> Record {
        Record::new(value).with_timestamp_ms(timestamp_ms)
    }

    fn init_error(params: &[(&str, &str)]) -> String {
        run_filter::<Dedupe>(params, &[]).unwrap_err()
    }

    #[test]
    fn filter_with_repeat_inside_default_window_drops_it() {
        let batch = [at("a", 0), at("a", 59_999), at("a", 60_000)];
        assert_eq!(
            run_filter::<Dedupe>(&[], &batch),
            Ok(vec![true, false, true])
        );
    }

    #[test]
    fn filter_after_window_expiry_keeps_record() {
        let mut harness = FilterHarness::<Dedupe>::new(&[("window_ms", "100")]).unwrap();
        assert_eq!(harness.filter(&[at("a", 1_000)]), Ok(vec![true]));
        assert_eq!(harness.filter(&[at("a", 1_099)]), Ok(vec![false]));
        assert_eq!(harness.filter(&[at("a", 1_100)]), Ok(vec![true]));
        assert_eq!(harness.filter(&[at("a", 1_150)]), Ok(vec![false]));
    }

    #[test]
    fn filter_with_dropped_duplicates_does_not_extend_window() {
        let batch = [at("a", 0), at("a", 60), at("a", 90), at("a", 100)];
        assert_eq!(
            run_filter::<Dedupe>(&[("window_ms", "100")], &batch),
            Ok(vec![true, false, false, true])
        );
    }

    #[test]
    fn filter_with_several_keys_tracks_each_key() {
        let batch = [at("a", 0), at("b", 10), at("a", 20), at("b", 30)];
        assert_eq!(
            run_filter::<Dedupe>(&[("window_ms", "100")], &batch),
            Ok(vec![true, true, false, false])
        );
    }

    #[test]
    fn filter_with_keyless_records_keeps_them() {
        let batch = [Record::new("v"), Record::new("v")];
        assert_eq!(run_filter::<Dedupe>(&[], &batch), Ok(vec![true, true]));
    }

    #[test]
    fn filter_with_late_records_uses_newest_kept() {
        let mut harness = FilterHarness::<Dedupe>::new(&[("window_ms", "100")]).unwrap();
        assert_eq!(harness.filter(&[at("a", 1_000)]), Ok(vec![true]));
        assert_eq!(
            harness.filter(&[at("a", 950), at("a", 500), at("a", 1_050)]),
            Ok(vec![false, true, false])
        );
    }

    #[test]
    fn filter_with_field_uses_json_value_as_identity() {
        let batch = [
            json_at(r#"{"id": 1, "n": "x"}"#, 0),
            json_at(r#"{"id": 1, "n": "y"}"#, 10),
            json_at(r#"{"id": "1"}"#, 20),
            json_at(r#"{"id": 2}"#, 30),
            json_at(r#"{"other": 1}"#, 40),
            json_at("not json", 50),
            json_at("not json", 60),
        ];
        assert_eq!(
            run_filter::<Dedupe>(&[("field", "id")], &batch),
            Ok(vec![true, false, true, true, true, true, true])
        );
    }

    #[test]
    fn filter_after_restart_remembers_kept_records() {
        let mut harness = FilterHarness::<Dedupe>::new(&[]).unwrap();
        assert_eq!(harness.filter(&[at("a", 0)]), Ok(vec![true]));
        harness.restart().unwrap();
        assert_eq!(harness.filter(&[at("a", 1)]), Ok(vec![false]));
    }

    #[test]
    fn init_with_bad_window_fails() {
        assert_eq!(
            init_error(&[("window_ms", "0")]),
            "parameter `window_ms`: invalid value `0`: must be at least 1"
        );
        assert_eq!(
            init_error(&[("window_ms", "1m")]),
            "parameter `window_ms`: invalid value `1m`: expected an unsigned integer"
        );
    }

    #[test]
    fn init_with_bad_field_fails() {
        assert_eq!(
            init_error(&[("field", "")]),
            "parameter `field`: invalid value ``: empty field path"
        );
    }

    #[test]
    fn init_with_unknown_param_fails() {
        assert_eq!(
            init_error(&[("windw_ms", "10")]),
            "unknown parameter `windw_ms` (accepted: window_ms, field)"
        );
    }

    #[test]
    fn filter_expires_identities_a_window_after_event_time() {
        let mut harness = FilterHarness::<Dedupe>::new(&[("window_ms", "100")]).unwrap();
        let batch: Vec<Record> = (0..50).map(|i| at(&format!("k{i}"), 1_000)).collect();
        assert_eq!(harness.filter(&batch).map(|m| m.len()), Ok(50));
        assert_eq!(harness.state().len(), 50);
        assert_eq!(harness.filter(&[at("other", 1_100)]), Ok(vec![true]));
        assert_eq!(
            harness.state().len(),
            1,
            "the 50 identities expired at event time 1100"
        );
    }
}
