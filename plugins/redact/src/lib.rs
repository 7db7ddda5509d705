//! `redact`: masks or removes fields of JSON records.
//!
//! Parameters:
//!
//! - `fields`: comma-separated dotted paths, such as `password,user.ssn`
//!   (see [`FieldPath`]).
//! - `mode`: `mask` (the default) replaces each field's value, whatever
//!   its type, with the string `"***"`; `remove` deletes the field.
//!
//! Fields absent from a record are left absent. A record that is not JSON,
//! or has none of the fields, passes through byte for byte. A redacted
//! record is re-serialized compactly, with object members in sorted order.

use edgebus_plugin::prelude::*;
use serde_json::Value;

const PARAMS: &[&str] = &["fields", "mode"];

/// What replaces a masked value.
pub const MASK: &str = "***";

/// What happens to a matched field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Mask,
    Remove,
}

/// The transform: the paths to redact and how.
pub struct Redact {
    fields: Vec<FieldPath>,
    mode: Mode,
}

impl Transform for Redact {
    fn init(params: &Params) -> Result<Self, String> {
        params.reject_unknown(PARAMS)?;
        let fields_text = params.require("fields")?;
        let fields = params
            .get_list("fields")
            .unwrap_or_default()
            .into_iter()
            .map(|path| {
                FieldPath::parse(path).map_err(|error| ParamError::invalid("fields", path, error))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if fields.is_empty() {
            return Err(
                ParamError::invalid("fields", fields_text, "name at least one field").into(),
            );
        }
        let mode = match params.get("mode").unwrap_or("mask") {
            "mask" => Mode::Mask,
            "remove" => Mode::Remove,
            other => {
                return Err(
                    ParamError::invalid("mode", other, "expected `mask` or `remove`").into(),
                );
            }
        };
        Ok(Redact { fields, mode })
    }

    fn transform(&mut self, mut record: Record) -> Result<Vec<Record>, String> {
        let Ok(mut document) = record.json() else {
            return Ok(vec![record]);
        };
        let mut changed = false;
        for field in &self.fields {
            changed |= match self.mode {
                Mode::Mask => match field.get_mut(&mut document) {
                    Some(value) => {
                        *value = Value::from(MASK);
                        true
                    }
                    None => false,
                },
                Mode::Remove => field.remove(&mut document).is_some(),
            };
        }
        if changed {
            record.value = serde_json::to_vec(&document).map_err(|error| error.to_string())?;
        }
        Ok(vec![record])
    }
}

export_transform!(Redact);

#[cfg(test)]
mod tests {
    use super::*;
    use edgebus_plugin::testing::run_transform;
    use serde_json::json;

    fn redact(params: &[(&str, &str)], value: &str) -> Vec<u8> {
        let input = Record::new(value).with_key("k").with_timestamp_ms(5);
        let mut outputs = run_transform::<Redact>(params, vec![input]).unwrap();
        assert_eq!(outputs.len(), 1);
        let output = outputs.remove(0);
        assert_eq!(output.len(), 1, "redact maps one record to one");
        assert_eq!(output[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(output[0].timestamp_ms, 5);
        output[0].value.clone()
    }

    fn redact_json(params: &[(&str, &str)], value: Value) -> Value {
        serde_json::from_slice(&redact(params, &value.to_string())).unwrap()
    }

    #[test]
    fn mask_with_nested_paths_replaces_values() {
        let input =
            json!({"user": {"ssn": 123, "name": "ann"}, "password": {"x": 1}, "l": ["a", "b"]});
        let output = redact_json(&[("fields", "user.ssn, password,l.1")], input);
        assert_eq!(
            output,
            json!({"user": {"ssn": "***", "name": "ann"}, "password": "***", "l": ["a", "***"]})
        );
    }

    #[test]
    fn remove_with_nested_paths_deletes_fields() {
        let input = json!({"user": {"ssn": 123, "name": "ann"}, "password": "p"});
        let output = redact_json(
            &[("fields", "user.ssn,password"), ("mode", "remove")],
            input,
        );
        assert_eq!(output, json!({"user": {"name": "ann"}}));
    }

    #[test]
    fn transform_with_absent_fields_keeps_bytes() {
        let value = r#"{ "b": 1,  "a": 2 }"#;
        assert_eq!(redact(&[("fields", "c,b.x")], value), value.as_bytes());
        assert_eq!(
            redact(&[("fields", "c"), ("mode", "remove")], value),
            value.as_bytes()
        );
    }

    #[test]
    fn transform_with_non_json_passes_through() {
        assert_eq!(redact(&[("fields", "a")], "plain text"), b"plain text");
    }

    #[test]
    fn init_without_fields_fails() {
        let error = run_transform::<Redact>(&[("mode", "mask")], vec![]).unwrap_err();
        assert_eq!(error, "missing required parameter `fields`");
        let error = run_transform::<Redact>(&[("fields", " , ")], vec![]).unwrap_err();
        assert_eq!(
            error,
            "parameter `fields`: invalid value ` , `: name at least one field"
        );
    }

    #[test]
    fn init_with_bad_mode_or_path_fails() {
        let error =
            run_transform::<Redact>(&[("fields", "a"), ("mode", "hide")], vec![]).unwrap_err();
        assert_eq!(
            error,
            "parameter `mode`: invalid value `hide`: expected `mask` or `remove`"
        );
        let error = run_transform::<Redact>(&[("fields", "a,b..c")], vec![]).unwrap_err();
        assert_eq!(
            error,
            "parameter `fields`: invalid value `b..c`: field path `b..c` has an empty segment"
        );
    }

    #[test]
    fn init_with_unknown_param_fails() {
        let error =
            run_transform::<Redact>(&[("fields", "a"), ("mod", "remove")], vec![]).unwrap_err();
        assert_eq!(error, "unknown parameter `mod` (accepted: fields, mode)");
    }
}
