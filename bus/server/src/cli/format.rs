//! How `consume` prints one record: the default text line, chosen text
//! columns (`--print-*`), a kcat/rpk-style `--format` template, or one
//! JSON/YAML object.

use std::fmt::Write as _;

use base64::Engine;
use edgebus_client::StoredRecord;
use serde_json::json;

use super::{Failure, Output};

/// One `%` directive of a `--format` template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// `%t`
    Topic,
    /// `%p`
    Partition,
    /// `%o`
    Offset,
    /// `%k`
    Key,
    /// `%v`
    Value,
    /// `%h`
    Headers,
    /// `%T`
    Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(Field),
}

/// A parsed `--format` template: literal text and fields, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

impl Template {
    /// Parses `%t %p %o %k %v %h %T`, `%%`, and the escapes `\n`, `\t`,
    /// `\\`. Anything else after `%` or `\` is refused rather than printed
    /// as is, so a typo shows at once instead of in every line.
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            match c {
                '%' => {
                    let field = match chars.next() {
                        Some('%') => {
                            text.push('%');
                            continue;
                        }
                        Some('t') => Field::Topic,
                        Some('p') => Field::Partition,
                        Some('o') => Field::Offset,
                        Some('k') => Field::Key,
                        Some('v') => Field::Value,
                        Some('h') => Field::Headers,
                        Some('T') => Field::Timestamp,
                        Some(other) => {
                            return Err(format!(
                                "unknown directive %{other}; use %t %p %o %k %v %h %T or %%"
                            ));
                        }
                        None => return Err("a lone % ends the template; write %% for %".into()),
                    };
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Field(field));
                }
                '\\' => match chars.next() {
                    Some('n') => text.push('\n'),
                    Some('t') => text.push('\t'),
                    Some('\\') => text.push('\\'),
                    Some(other) => {
                        return Err(format!("unknown escape \\{other}; use \\n, \\t or \\\\"));
                    }
                    None => return Err("a lone \\ ends the template; write \\\\ for \\".into()),
                },
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Template(pieces))
    }

    /// The tab-separated line the `--print-*` flags ask for, in a fixed
    /// order with the value last, so `cut -f` finds a column at the same
    /// place in every line.
    pub fn columns(columns: Columns) -> Template {
        let chosen = [
            (columns.timestamp, Field::Timestamp),
            (columns.partition, Field::Partition),
            (columns.offset, Field::Offset),
            (columns.key, Field::Key),
            (columns.headers, Field::Headers),
        ];
        let mut pieces = Vec::new();
        for (_, field) in chosen.into_iter().filter(|(on, _)| *on) {
            pieces.push(Piece::Field(field));
            pieces.push(Piece::Text("\t".into()));
        }
        pieces.push(Piece::Field(Field::Value));
        pieces.push(Piece::Text("\n".into()));
        Template(pieces)
    }
}

/// Which columns the `--print-*` flags add before the value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Columns {
    /// `--print-timestamp`
    pub timestamp: bool,
    /// `--print-partition`
    pub partition: bool,
    /// `--print-offset`
    pub offset: bool,
    /// `--print-keys`
    pub key: bool,
    /// `--print-headers`
    pub headers: bool,
}

impl Columns {
    fn any(self) -> bool {
        self.timestamp || self.partition || self.offset || self.key || self.headers
    }
}

/// How each record is printed.
#[derive(Debug, Clone)]
pub enum RecordFormat {
    /// `key<TAB>value` for keyed records, else the value.
    Plain,
    /// A template, from `--format` or the `--print-*` flags.
    Template(Template),
    /// One JSON or YAML object per record.
    Structured(Output),
}

impl RecordFormat {
    /// Chooses from `--output`, `--format` and the `--print-*` flags (clap
    /// keeps `--format` and the flags from being given with each other or
    /// with `--output`).
    pub fn new(output: Output, template: Option<Template>, columns: Columns) -> RecordFormat {
        match (output, template) {
            (Output::Json | Output::Yaml, _) => RecordFormat::Structured(output),
            (Output::Text, Some(t)) => RecordFormat::Template(t),
            (Output::Text, None) if columns.any() => {
                RecordFormat::Template(Template::columns(columns))
            }
            (Output::Text, None) => RecordFormat::Plain,
        }
    }

    /// Appends `record` of `topic`/`partition` to `out`.
    pub fn render(
        &self,
        topic: &str,
        partition: u32,
        record: &StoredRecord,
        out: &mut String,
    ) -> Result<(), Failure> {
        match self {
            RecordFormat::Plain => {
                if let Some(k) = &record.key {
                    out.push_str(&encode(k).0);
                    out.push('\t');
                }
                out.push_str(&encode(&record.value).0);
                out.push('\n');
            }
            RecordFormat::Template(Template(pieces)) => {
                for piece in pieces {
                    match piece {
                        Piece::Text(t) => out.push_str(t),
                        Piece::Field(f) => render_field(*f, topic, partition, record, out),
                    }
                }
            }
            RecordFormat::Structured(output) => {
                out.push_str(&output.render(&structured(topic, partition, record))?);
            }
        }
        Ok(())
    }
}

fn render_field(f: Field, topic: &str, partition: u32, r: &StoredRecord, out: &mut String) {
    match f {
        Field::Topic => out.push_str(topic),
        Field::Partition => {
            let _ = write!(out, "{partition}");
        }
        Field::Offset => {
            let _ = write!(out, "{}", r.offset);
        }
        Field::Key => {
            if let Some(k) = &r.key {
                out.push_str(&encode(k).0);
            }
        }
        Field::Value => out.push_str(&encode(&r.value).0),
        Field::Headers => {
            for (i, h) in r.headers.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}={}", h.key, encode(&h.value).0);
            }
        }
        Field::Timestamp => out.push_str(&rfc3339(r.timestamp_ms)),
    }
}

/// A record timestamp as RFC 3339 UTC with milliseconds, always three
/// digits so columns line up; a timestamp outside the years RFC 3339 can
/// show (0000–9999) is printed as its milliseconds.
fn rfc3339(timestamp_ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(timestamp_ms) * 1_000_000)
        .ok()
        .filter(|t| (0..=9999).contains(&t.year()))
        .map_or_else(
            || timestamp_ms.to_string(),
            |t| {
                format!(
                    "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                    t.year(),
                    u8::from(t.month()),
                    t.day(),
                    t.hour(),
                    t.minute(),
                    t.second(),
                    t.millisecond()
                )
            },
        )
}

/// The JSON object `--output json|yaml` prints for a record.
fn structured(topic: &str, partition: u32, r: &StoredRecord) -> serde_json::Value {
    let (value, value_encoding) = encode(&r.value);
    let key = r.key.as_ref().map(|k| encode(k));
    let headers: Vec<_> = r
        .headers
        .iter()
        .map(|h| {
            let (value, encoding) = encode(&h.value);
            json!({"key": h.key, "value": value, "value_encoding": encoding})
        })
        .collect();
    json!({
        "topic": topic,
        "partition": partition,
        "offset": r.offset,
        "timestamp": r.timestamp_ms,
        "key": key.as_ref().map(|k| &k.0),
        "key_encoding": key.as_ref().map(|k| k.1),
        "value": value,
        "value_encoding": value_encoding,
        "headers": headers,
    })
}

/// Text if the bytes are UTF-8, else base64, and which one it is.
fn encode(bytes: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_owned(), "utf8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(bytes),
            "base64",
        ),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use edgebus_client::Header;

    use super::*;

    fn record() -> StoredRecord {
        StoredRecord {
            offset: 7,
            timestamp_ms: 1_767_323_045_123,
            key: Some(Bytes::from_static(b"k1")),
            value: Bytes::from_static(b"v1"),
            headers: vec![
                Header {
                    key: "a".into(),
                    value: Bytes::from_static(b"1"),
                },
                Header {
                    key: "b".into(),
                    value: Bytes::from_static(&[0xff]),
                },
            ],
        }
    }

    fn render(format: &RecordFormat) -> String {
        let mut out = String::new();
        format.render("t", 2, &record(), &mut out).unwrap();
        out
    }

    #[test]
    fn template_renders_every_directive_and_escape() {
        let t = Template::parse(r"%t|%p|%o|%k|%v|%h|%T|%%\t\\\n").unwrap();
        assert_eq!(
            render(&RecordFormat::Template(t)),
            "t|2|7|k1|v1|a=1,b=/w==|2026-01-02T03:04:05.123Z|%\t\\\n"
        );
    }

    #[test]
    fn template_with_unknown_directive_or_escape_is_refused() {
        assert!(Template::parse("%x").unwrap_err().contains("%x"));
        assert!(Template::parse("%").is_err());
        assert!(Template::parse(r"\q").unwrap_err().contains(r"\q"));
        assert!(Template::parse("\\").is_err());
    }

    #[test]
    fn columns_keep_a_fixed_order_with_the_value_last() {
        let all = Columns {
            timestamp: true,
            partition: true,
            offset: true,
            key: true,
            headers: true,
        };
        assert_eq!(
            render(&RecordFormat::new(Output::Text, None, all)),
            "2026-01-02T03:04:05.123Z\t2\t7\tk1\ta=1,b=/w==\tv1\n"
        );
        let offset = Columns {
            offset: true,
            ..Columns::default()
        };
        assert_eq!(
            render(&RecordFormat::new(Output::Text, None, offset)),
            "7\tv1\n"
        );
    }

    #[test]
    fn plain_prints_key_tab_value() {
        let plain = RecordFormat::new(Output::Text, None, Columns::default());
        assert_eq!(render(&plain), "k1\tv1\n");
    }

    #[test]
    fn rfc3339_falls_back_to_milliseconds_out_of_range() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(i64::MAX), i64::MAX.to_string());
    }

    #[test]
    fn encode_marks_binary_as_base64() {
        assert_eq!(encode(b"hi"), ("hi".to_owned(), "utf8"));
        assert_eq!(encode(&[0xff, 0x00]), ("/wA=".to_owned(), "base64"));
    }
}
