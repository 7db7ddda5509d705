//! `json-filter`: keeps JSON records whose field compares true against a
//! value.
//!
//! Parameters:
//!
//! - `field`: a dotted path into the value, such as `sensor.temp` or
//!   `readings.0` (see [`FieldPath`]).
//! - `op`: one of `==`, `!=`, `<`, `<=`, `>`, `>=`, `exists`, `contains`.
//! - `value`: a JSON literal to compare with: `30`, `true`, `"hot"` (strings
//!   in double quotes). Required for every op but `exists`.
//!
//! Numbers compare numerically (`1 == 1.0`), strings by their bytes;
//! ordering ops need a number or string `value` and are false against a
//! field of another type. `contains` is a substring test on a string field
//! and an element test on an array field. `exists` is true for a field
//! present with any value, `null` included.
//!
//! A record that is not JSON, or lacks the field, is dropped for every op
//! (so `!=` keeps only records that have the field): a filter on data it
//! cannot read should not fail the producer's batch.

use edgebus_plugin::prelude::*;
use serde_json::{Number, Value};
use std::cmp::Ordering;

const PARAMS: &[&str] = &["field", "op", "value"];

/// How a field is compared with the parameter `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Exists,
    Contains,
}

impl Op {
    fn parse(text: &str) -> Result<Self, ParamError> {
        Ok(match text {
            "==" => Op::Eq,
            "!=" => Op::Ne,
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "exists" => Op::Exists,
            "contains" => Op::Contains,
            _ => {
                return Err(ParamError::invalid(
                    "op",
                    text,
                    "expected one of == != < <= > >= exists contains",
                ));
            }
        })
    }

    fn is_ordering(self) -> bool {
        matches!(self, Op::Lt | Op::Le | Op::Gt | Op::Ge)
    }
}

/// The filter: one parsed condition.
pub struct JsonFilter {
    field: FieldPath,
    op: Op,
    value: Value,
}

impl Filter for JsonFilter {
    fn init(params: &Params) -> Result<Self, String> {
        params.reject_unknown(PARAMS)?;
        let field_text = params.require("field")?;
        let field = FieldPath::parse(field_text)
            .map_err(|error| ParamError::invalid("field", field_text, error))?;
        let op = Op::parse(params.require("op")?)?;
        let value = match (op, params.get("value")) {
            (Op::Exists, None) => Value::Null,
            (Op::Exists, Some(text)) => {
                return Err(
                    ParamError::invalid("value", text, "op `exists` takes no value").into(),
                );
            }
            _ => {
                let text = params.require("value")?;
                let value = parse_literal(text)?;
                if op.is_ordering() && !(value.is_number() || value.is_string()) {
                    return Err(ParamError::invalid(
                        "value",
                        text,
                        "ordering ops compare with a number or a string",
                    )
                    .into());
                }
                value
            }
        };
        Ok(JsonFilter { field, op, value })
    }

    fn filter(&mut self, record: &Record) -> Result<bool, String> {
        let Ok(document) = record.json() else {
            return Ok(false);
        };
        let Some(field) = self.field.get(&document) else {
            return Ok(false);
        };
        Ok(match self.op {
            Op::Exists => true,
            Op::Eq => json_eq(field, &self.value),
            Op::Ne => !json_eq(field, &self.value),
            Op::Lt => compare(field, &self.value) == Some(Ordering::Less),
            Op::Le => matches!(
                compare(field, &self.value),
                Some(Ordering::Less | Ordering::Equal)
            ),
            Op::Gt => compare(field, &self.value) == Some(Ordering::Greater),
            Op::Ge => matches!(
                compare(field, &self.value),
                Some(Ordering::Greater | Ordering::Equal)
            ),
            Op::Contains => contains(field, &self.value),
        })
    }
}

export_filter!(JsonFilter);

fn parse_literal(text: &str) -> Result<Value, ParamError> {
    serde_json::from_str(text).map_err(|_| {
        ParamError::invalid(
            "value",
            text,
            "expected a JSON literal such as 30, true or \"hot\" (strings in double quotes)",
        )
    })
}

/// Equality with numbers compared by value at any depth, so `1` equals
/// `1.0` as it would to a person reading the data.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y) == Some(Ordering::Equal),
        (Value::Array(xs), Value::Array(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(xs), Value::Object(ys)) => {
            xs.len() == ys.len()
                && xs
                    .iter()
                    .all(|(key, x)| ys.get(key).is_some_and(|y| json_eq(x, y)))
        }
        _ => a == b,
    }
}

/// Order of two numbers or two strings; `None` for any other pairing.
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Exact for integers, so large ids compare correctly; floats otherwise.
fn compare_numbers(x: &Number, y: &Number) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
        return Some(x.cmp(&y));
    }
    if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
        return Some(x.cmp(&y));
    }
    x.as_f64()?.partial_cmp(&y.as_f64()?)
}

fn contains(field: &Value, value: &Value) -> bool {
    match (field, value) {
        (Value::String(haystack), Value::String(needle)) => haystack.contains(needle.as_str()),
        (Value::Array(elements), _) => elements.iter().any(|element| json_eq(element, value)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgebus_plugin::testing::run_filter;

    const DOCS: [&str; 6] = [
        r#"{"sensor": {"temp": 20}}"#,
        r#"{"sensor": {"temp": 30.0}}"#,
        r#"{"sensor": {"temp": 40}}"#,
        r#"{"sensor": {"temp": "hot"}}"#,
        r#"{"sensor": {}}"#,
        "not json",
    ];

    fn mask(op: &str, value: Option<&str>) -> Vec<bool> {
        let mut params = vec![("field", "sensor.temp"), ("op", op)];
        params.extend(value.map(|value| ("value", value)));
        let batch: Vec<Record> = DOCS.iter().map(|doc| Record::new(*doc)).collect();
        run_filter::<JsonFilter>(&params, &batch).unwrap()
    }

    fn init_error(params: &[(&str, &str)]) -> String {
        run_filter::<JsonFilter>(params, &[]).unwrap_err()
    }

    #[test]
    fn eq_with_number_matches_numerically() {
        assert_eq!(
            mask("==", Some("30")),
            [false, true, false, false, false, false]
        );
    }

    #[test]
    fn ne_with_number_keeps_other_present_values() {
        assert_eq!(
            mask("!=", Some("30")),
            [true, false, true, true, false, false]
        );
    }

    #[test]
    fn lt_and_le_with_number_compare_numbers_only() {
        assert_eq!(
            mask("<", Some("30")),
            [true, false, false, false, false, false]
        );
        assert_eq!(
            mask("<=", Some("30")),
            [true, true, false, false, false, false]
        );
    }

    #[test]
    fn gt_and_ge_with_number_compare_numbers_only() {
        assert_eq!(
            mask(">", Some("30")),
            [false, false, true, false, false, false]
        );
        assert_eq!(
            mask(">=", Some("30")),
            [false, true, true, false, false, false]
        );
    }

    #[test]
    fn ordering_with_string_compares_lexically() {
        let batch = [
            Record::new(r#"{"name": "apple"}"#),
            Record::new(r#"{"name": "banana"}"#),
            Record::new(r#"{"name": 5}"#),
        ];
        let params = [("field", "name"), ("op", ">"), ("value", r#""b""#)];
        assert_eq!(
            run_filter::<JsonFilter>(&params, &batch),
            Ok(vec![false, true, false])
        );
    }

    #[test]
    fn exists_keeps_present_fields_only() {
        assert_eq!(mask("exists", None), [true, true, true, true, false, false]);
        let batch = [Record::new(r#"{"sensor": {"temp": null}}"#)];
        let params = [("field", "sensor.temp"), ("op", "exists")];
        assert_eq!(run_filter::<JsonFilter>(&params, &batch), Ok(vec![true]));
    }

    #[test]
    fn contains_with_string_field_tests_substring() {
        assert_eq!(
            mask("contains", Some(r#""ho""#)),
            [false, false, false, true, false, false]
        );
    }

    #[test]
    fn contains_with_array_field_tests_elements() {
        let batch = [
            Record::new(r#"{"tags": ["a", 2, {"x": 1}]}"#),
            Record::new(r#"{"tags": ["b"]}"#),
        ];
        let has = |value: &str| {
            let params = [("field", "tags"), ("op", "contains"), ("value", value)];
            run_filter::<JsonFilter>(&params, &batch).unwrap()
        };
        assert_eq!(has(r#""a""#), [true, false]);
        assert_eq!(has("2.0"), [true, false]);
        assert_eq!(has(r#"{"x": 1.0}"#), [true, false]);
        assert_eq!(has(r#""c""#), [false, false]);
    }

    #[test]
    fn eq_with_large_integers_compares_exactly() {
        let batch = [Record::new(r#"{"id": 9007199254740993}"#)];
        let eq = |value: &str| {
            let params = [("field", "id"), ("op", "=="), ("value", value)];
            run_filter::<JsonFilter>(&params, &batch).unwrap()
        };
        assert_eq!(eq("9007199254740993"), [true]);
        assert_eq!(eq("9007199254740992"), [false]);
    }

    #[test]
    fn eq_with_array_index_path_reads_element() {
        let batch = [
            Record::new(r#"{"r": [1, 5]}"#),
            Record::new(r#"{"r": [1]}"#),
        ];
        let params = [("field", "r.1"), ("op", "=="), ("value", "5")];
        assert_eq!(
            run_filter::<JsonFilter>(&params, &batch),
            Ok(vec![true, false])
        );
    }

    #[test]
    fn init_without_field_or_op_fails() {
        assert_eq!(
            init_error(&[("op", "exists")]),
            "missing required parameter `field`"
        );
        assert_eq!(
            init_error(&[("field", "a")]),
            "missing required parameter `op`"
        );
    }

    #[test]
    fn init_with_unknown_op_lists_ops() {
        assert_eq!(
            init_error(&[("field", "a"), ("op", "=~"), ("value", "1")]),
            "parameter `op`: invalid value `=~`: expected one of == != < <= > >= exists contains"
        );
    }

    #[test]
    fn init_without_value_for_comparison_fails() {
        assert_eq!(
            init_error(&[("field", "a"), ("op", "==")]),
            "missing required parameter `value`"
        );
    }

    #[test]
    fn init_with_value_for_exists_fails() {
        assert_eq!(
            init_error(&[("field", "a"), ("op", "exists"), ("value", "1")]),
            "parameter `value`: invalid value `1`: op `exists` takes no value"
        );
    }

    #[test]
    fn init_with_unquoted_string_value_explains_quoting() {
        assert_eq!(
            init_error(&[("field", "a"), ("op", "=="), ("value", "hot")]),
            "parameter `value`: invalid value `hot`: expected a JSON literal such as 30, \
             true or \"hot\" (strings in double quotes)"
        );
    }

    #[test]
    fn init_with_bool_value_for_ordering_fails() {
        assert_eq!(
            init_error(&[("field", "a"), ("op", "<"), ("value", "true")]),
            "parameter `value`: invalid value `true`: ordering ops compare with a number or a string"
        );
    }

    #[test]
    fn init_with_bad_field_path_fails() {
        assert_eq!(
            init_error(&[("field", "a..b"), ("op", "exists")]),
            "parameter `field`: invalid value `a..b`: field path `a..b` has an empty segment"
        );
    }

    #[test]
    fn init_with_unknown_param_fails() {
        assert_eq!(
            init_error(&[("field", "a"), ("op", "exists"), ("vaule", "1")]),
            "unknown parameter `vaule` (accepted: field, op, value)"
        );
    }
}
