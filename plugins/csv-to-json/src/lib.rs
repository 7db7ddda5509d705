//! `csv-to-json`: turns CSV lines into JSON objects.
//!
//! Parameters:
//!
//! - `columns` (required): comma-separated names, one per CSV field.
//! - `delimiter`: one character (default `,`); `\t` means tab.
//! - `types`: comma-separated `string`, `number` or `bool`, one per column
//!   (default all `string`). `number` takes integers and decimals, `bool`
//!   takes `true` or `false` in any case; an empty `number` or `bool` field
//!   becomes `null`.
//!
//! Each line of a record's value becomes one record whose value is a JSON
//! object with the columns as members, in column order; key, headers and
//! timestamp are copied from the input. So a value holding several lines
//! fans out, and empty lines are skipped. `\r\n` line ends are accepted. A
//! field may be double-quoted to hold the delimiter, with `""` for a quote;
//! a quoted field cannot span lines.
//!
//! A bad line (wrong field count, unterminated quote, a value its type
//! rejects, or a record that is not UTF-8) is dropped with a warning in the
//! broker's log. It is not an error, because an error rejects the whole
//! batch: one malformed line from one device would then refuse every other
//! producer's records on ingest, or stall a pipeline.

use edgebus_plugin::prelude::*;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Number, Value};
use std::collections::BTreeSet;

const PARAMS: &[&str] = &["columns", "delimiter", "types"];

/// How a column's text becomes a JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColumnType {
    String,
    Number,
    Bool,
}

impl ColumnType {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "string" => Some(ColumnType::String),
            "number" => Some(ColumnType::Number),
            "bool" => Some(ColumnType::Bool),
            _ => None,
        }
    }

    fn convert(self, text: &str) -> Result<Value, String> {
        let trimmed = text.trim();
        match self {
            ColumnType::String => Ok(Value::from(text)),
            ColumnType::Number | ColumnType::Bool if trimmed.is_empty() => Ok(Value::Null),
            ColumnType::Number => parse_number(trimmed)
                .map(Value::Number)
                .ok_or_else(|| format!("`{text}` is not a number")),
            ColumnType::Bool if trimmed.eq_ignore_ascii_case("true") => Ok(Value::Bool(true)),
            ColumnType::Bool if trimmed.eq_ignore_ascii_case("false") => Ok(Value::Bool(false)),
            ColumnType::Bool => Err(format!("`{text}` is not true or false")),
        }
    }
}

/// The transform: the column layout.
pub struct CsvToJson {
    columns: Vec<String>,
    types: Vec<ColumnType>,
    delimiter: char,
}

impl Transform for CsvToJson {
    fn init(params: &Params) -> Result<Self, String> {
        params.reject_unknown(PARAMS)?;
        let columns_text = params.require("columns")?;
        let columns: Vec<String> = params
            .get_list("columns")
            .unwrap_or_default()
            .into_iter()
            .map(str::to_owned)
            .collect();
        if columns.is_empty() {
            return Err(
                ParamError::invalid("columns", columns_text, "name at least one column").into(),
            );
        }
        let mut seen = BTreeSet::new();
        if let Some(repeated) = columns.iter().find(|name| !seen.insert(name.as_str())) {
            return Err(ParamError::invalid(
                "columns",
                columns_text,
                format!("column `{repeated}` appears twice"),
            )
            .into());
        }
        let types = match params.get_list("types") {
            None => vec![ColumnType::String; columns.len()],
            Some(names) => parse_types(params.require("types")?, &names, columns.len())?,
        };
        let delimiter = parse_delimiter(params.get("delimiter").unwrap_or(","))?;
        Ok(CsvToJson {
            columns,
            types,
            delimiter,
        })
    }

    fn transform(&mut self, mut record: Record) -> Result<Vec<Record>, String> {
        let input = std::mem::take(&mut record.value);
        let Ok(text) = std::str::from_utf8(&input) else {
            warn_dropped(&record, None, "value is not UTF-8");
            return Ok(Vec::new());
        };
        let mut outputs = Vec::new();
        for (index, line) in text.lines().enumerate() {
            if line.is_empty() {
                continue;
            }
            match self.row(line) {
                Ok(row) => outputs.push(Record {
                    value: serde_json::to_vec(&row).map_err(|error| error.to_string())?,
                    ..record.clone()
                }),
                Err(reason) => warn_dropped(&record, Some(index + 1), &reason),
            }
        }
        Ok(outputs)
    }
}

export_transform!(CsvToJson);

impl CsvToJson {
    fn row(&self, line: &str) -> Result<Row<'_>, String> {
        let fields = split_fields(line, self.delimiter)?;
        if fields.len() != self.columns.len() {
            return Err(format!(
                "expected {} fields, found {}",
                self.columns.len(),
                fields.len()
            ));
        }
        let values = fields
            .iter()
            .zip(&self.types)
            .map(|(field, column_type)| column_type.convert(field))
            .collect::<Result<_, _>>()?;
        Ok(Row {
            columns: &self.columns,
            values,
        })
    }
}

/// One converted line. Serialized by hand, member by member, so the JSON
/// keeps column order (a `serde_json::Map` would sort the members).
struct Row<'a> {
    columns: &'a [String],
    values: Vec<Value>,
}

impl Serialize for Row<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.columns.len()))?;
        for (column, value) in self.columns.iter().zip(&self.values) {
            map.serialize_entry(column, value)?;
        }
        map.end()
    }
}

fn parse_types(text: &str, names: &[&str], columns: usize) -> Result<Vec<ColumnType>, ParamError> {
    if names.len() != columns {
        let reason = format!("{} types for {} columns", names.len(), columns);
        return Err(ParamError::invalid("types", text, reason));
    }
    names
        .iter()
        .map(|name| {
            ColumnType::parse(name).ok_or_else(|| {
                let reason = format!("unknown type `{name}`, expected string, number or bool");
                ParamError::invalid("types", text, reason)
            })
        })
        .collect()
}

fn parse_delimiter(text: &str) -> Result<char, ParamError> {
    let delimiter = if text == "\\t" {
        '\t'
    } else {
        let mut chars = text.chars();
        match (chars.next(), chars.next()) {
            (Some(delimiter), None) => delimiter,
            _ => {
                return Err(ParamError::invalid(
                    "delimiter",
                    text,
                    "expected one character",
                ));
            }
        }
    };
    if matches!(delimiter, '"' | '\r' | '\n') {
        return Err(ParamError::invalid(
            "delimiter",
            text,
            "cannot be a quote or a line break",
        ));
    }
    Ok(delimiter)
}

/// Splits one line into fields, unquoting `"..."` fields.
fn split_fields(line: &str, delimiter: char) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut rest = line;
    loop {
        let (field, after) = match rest.strip_prefix('"') {
            Some(quoted) => unquote(quoted)?,
            None => {
                let end = rest.find(delimiter).unwrap_or(rest.len());
                (rest[..end].to_owned(), &rest[end..])
            }
        };
        fields.push(field);
        let mut after_chars = after.chars();
        match after_chars.next() {
            None => return Ok(fields),
            Some(next) if next == delimiter => rest = after_chars.as_str(),
            Some(_) => return Err("text after a closing quote".to_owned()),
        }
    }
}

/// Reads a quoted field's contents up to its closing quote; returns them
/// and the text after the quote.
fn unquote(text: &str) -> Result<(String, &str), String> {
    let mut contents = String::new();
    let mut rest = text;
    loop {
        let end = rest
            .find('"')
            .ok_or_else(|| "unterminated quoted field".to_owned())?;
        contents.push_str(&rest[..end]);
        rest = &rest[end + 1..];
        match rest.strip_prefix('"') {
            Some(after_escape) => {
                contents.push('"');
                rest = after_escape;
            }
            None => return Ok((contents, rest)),
        }
    }
}

/// Integers stay exact; anything else must be a finite decimal.
fn parse_number(text: &str) -> Option<Number> {
    if let Ok(integer) = text.parse::<i64>() {
        return Some(integer.into());
    }
    if let Ok(integer) = text.parse::<u64>() {
        return Some(integer.into());
    }
    text.parse::<f64>().ok().and_then(Number::from_f64)
}

fn warn_dropped(record: &Record, line: Option<usize>, reason: &str) {
    let what = match line {
        Some(line) => format!("line {line} of record"),
        None => "record".to_owned(),
    };
    let offset = record
        .offset
        .map(|offset| format!(" at offset {offset}"))
        .unwrap_or_default();
    log::warn(&format!("csv-to-json: dropped {what}{offset}: {reason}"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgebus_plugin::log::Level;
    use edgebus_plugin::testing::{LogLine, TransformHarness, run_transform};

    fn values(params: &[(&str, &str)], value: &[u8]) -> Vec<String> {
        let mut outputs = run_transform::<CsvToJson>(params, vec![Record::new(value)]).unwrap();
        assert_eq!(outputs.len(), 1);
        outputs
            .remove(0)
            .into_iter()
            .map(|record| String::from_utf8(record.value).unwrap())
            .collect()
    }

    fn init_error(params: &[(&str, &str)]) -> String {
        run_transform::<CsvToJson>(params, vec![]).unwrap_err()
    }

    #[test]
    fn transform_without_types_keeps_strings_in_column_order() {
        assert_eq!(
            values(&[("columns", "z,a")], b"1, x"),
            [r#"{"z":"1","a":" x"}"#]
        );
    }

    #[test]
    fn transform_with_types_converts_values() {
        let params = [
            ("columns", "id,temp,count,ok"),
            ("types", "string, number,number,bool"),
        ];
        assert_eq!(
            values(&params, b"a1,21.5,-3,TRUE"),
            [r#"{"id":"a1","temp":21.5,"count":-3,"ok":true}"#]
        );
        assert_eq!(
            values(&params, b"a2,,18446744073709551615,"),
            [r#"{"id":"a2","temp":null,"count":18446744073709551615,"ok":null}"#]
        );
    }

    #[test]
    fn transform_with_quoted_fields_unquotes_them() {
        assert_eq!(
            values(
                &[("columns", "name,quote,n")],
                br#""Smith, J","say ""hi""",3"#
            ),
            [r#"{"name":"Smith, J","quote":"say \"hi\"","n":"3"}"#]
        );
    }

    #[test]
    fn transform_with_several_lines_fans_out_and_copies_metadata() {
        let input = Record::new("a,1\r\n\nb,2\n")
            .with_key("k")
            .with_header("h", "v")
            .with_timestamp_ms(9);
        let outputs = run_transform::<CsvToJson>(&[("columns", "n,v")], vec![input]).unwrap();
        let expected = |value: &str| {
            Record::new(value)
                .with_key("k")
                .with_header("h", "v")
                .with_timestamp_ms(9)
        };
        assert_eq!(
            outputs,
            vec![vec![
                expected(r#"{"n":"a","v":"1"}"#),
                expected(r#"{"n":"b","v":"2"}"#)
            ]]
        );
    }

    #[test]
    fn transform_with_custom_delimiters_splits_on_them() {
        assert_eq!(
            values(&[("columns", "a,b"), ("delimiter", ";")], b"1,5;2"),
            [r#"{"a":"1,5","b":"2"}"#]
        );
        assert_eq!(
            values(&[("columns", "a,b"), ("delimiter", "\\t")], b"1\t2"),
            [r#"{"a":"1","b":"2"}"#]
        );
    }

    #[test]
    fn transform_with_bad_lines_drops_them_and_warns() {
        let params = [("columns", "a,b"), ("types", "string,number")];
        let mut harness = TransformHarness::<CsvToJson>::new(&params).unwrap();
        let input = Record::new("x,1\nonly\ny,two\n\"open,3\n\"q\"x,4\nz,2").with_offset(17);
        let outputs = harness.transform(vec![input]).unwrap();
        let kept: Vec<&[u8]> = outputs[0].iter().map(|r| r.value.as_slice()).collect();
        assert_eq!(kept, [&br#"{"a":"x","b":1}"#[..], br#"{"a":"z","b":2}"#]);
        let warn = |message: &str| LogLine {
            level: Level::Warn,
            message: message.to_owned(),
        };
        assert_eq!(
            harness.logs(),
            [
                warn(
                    "csv-to-json: dropped line 2 of record at offset 17: expected 2 fields, found 1"
                ),
                warn("csv-to-json: dropped line 3 of record at offset 17: `two` is not a number"),
                warn(
                    "csv-to-json: dropped line 4 of record at offset 17: unterminated quoted field"
                ),
                warn(
                    "csv-to-json: dropped line 5 of record at offset 17: text after a closing quote"
                ),
            ]
        );
    }

    #[test]
    fn transform_with_bad_bool_or_utf8_drops_record() {
        let params = [("columns", "ok"), ("types", "bool")];
        let mut harness = TransformHarness::<CsvToJson>::new(&params).unwrap();
        let outputs = harness
            .transform(vec![Record::new("yes"), Record::new(vec![0xff, b'\n'])])
            .unwrap();
        assert_eq!(outputs, vec![vec![], vec![]]);
        let messages: Vec<&str> = harness.logs().iter().map(|l| l.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "csv-to-json: dropped line 1 of record: `yes` is not true or false",
                "csv-to-json: dropped record: value is not UTF-8",
            ]
        );
    }

    #[test]
    fn init_without_columns_fails() {
        assert_eq!(init_error(&[]), "missing required parameter `columns`");
        assert_eq!(
            init_error(&[("columns", ",")]),
            "parameter `columns`: invalid value `,`: name at least one column"
        );
    }

    #[test]
    fn init_with_repeated_column_fails() {
        assert_eq!(
            init_error(&[("columns", "a,b,a")]),
            "parameter `columns`: invalid value `a,b,a`: column `a` appears twice"
        );
    }

    #[test]
    fn init_with_bad_types_fails() {
        assert_eq!(
            init_error(&[("columns", "a,b"), ("types", "number")]),
            "parameter `types`: invalid value `number`: 1 types for 2 columns"
        );
        assert_eq!(
            init_error(&[("columns", "a"), ("types", "int")]),
            "parameter `types`: invalid value `int`: unknown type `int`, expected string, number or bool"
        );
    }

    #[test]
    fn init_with_bad_delimiter_fails() {
        assert_eq!(
            init_error(&[("columns", "a"), ("delimiter", "::")]),
            "parameter `delimiter`: invalid value `::`: expected one character"
        );
        assert_eq!(
            init_error(&[("columns", "a"), ("delimiter", "\"")]),
            "parameter `delimiter`: invalid value `\"`: cannot be a quote or a line break"
        );
    }

    #[test]
    fn init_with_unknown_param_fails() {
        assert_eq!(
            init_error(&[("columns", "a"), ("header", "true")]),
            "unknown parameter `header` (accepted: columns, delimiter, types)"
        );
    }
}
