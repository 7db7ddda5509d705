//! [`FieldPath`], the dotted paths (`sensor.temp`) that JSON plugins take
//! as parameters.
//!
//! Kept in the SDK so that every plugin reads `a.b.0` the same way: a
//! segment names an object member, or, where the value at that point is an
//! array, an element by index. Member names that contain a dot cannot be
//! addressed.

use serde_json::Value;
use std::fmt;
use std::str::FromStr;

/// Why a path could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FieldPathError {
    /// The path is empty.
    #[error("empty field path")]
    Empty,
    /// The path has an empty segment, as in `a..b` or `.a`.
    #[error("field path `{path}` has an empty segment")]
    EmptySegment {
        /// The path as written.
        path: String,
    },
}

/// A parsed dotted path into a JSON document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    segments: Vec<String>,
}

impl FieldPath {
    /// Parses `a.b.c`. Segments are taken verbatim, spaces included.
    pub fn parse(path: &str) -> Result<Self, FieldPathError> {
        if path.is_empty() {
            return Err(FieldPathError::Empty);
        }
        let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            return Err(FieldPathError::EmptySegment {
                path: path.to_owned(),
            });
        }
        Ok(Self { segments })
    }

    /// The value at this path in `document`, if there is one.
    pub fn get<'v>(&self, document: &'v Value) -> Option<&'v Value> {
        self.segments
            .iter()
            .try_fold(document, |value, segment| child(value, segment))
    }

    /// The value at this path in `document`, mutably, if there is one.
    pub fn get_mut<'v>(&self, document: &'v mut Value) -> Option<&'v mut Value> {
        self.segments
            .iter()
            .try_fold(document, |value, segment| child_mut(value, segment))
    }

    /// Removes the value at this path from its object or array and returns
    /// it. Removing an array element shifts the later ones down.
    pub fn remove(&self, document: &mut Value) -> Option<Value> {
        let (last, parents) = self
            .segments
            .split_last()
            .expect("a parsed path has a segment");
        let parent = parents
            .iter()
            .try_fold(document, |value, segment| child_mut(value, segment))?;
        match parent {
            Value::Object(members) => members.remove(last),
            Value::Array(elements) => {
                let index = array_index(last, elements.len())?;
                Some(elements.remove(index))
            }
            _ => None,
        }
    }
}

fn child<'v>(value: &'v Value, segment: &str) -> Option<&'v Value> {
    match value {
        Value::Object(members) => members.get(segment),
        Value::Array(elements) => elements.get(array_index(segment, elements.len())?),
        _ => None,
    }
}

fn child_mut<'v>(value: &'v mut Value, segment: &str) -> Option<&'v mut Value> {
    match value {
        Value::Object(members) => members.get_mut(segment),
        Value::Array(elements) => {
            let index = array_index(segment, elements.len())?;
            elements.get_mut(index)
        }
        _ => None,
    }
}

fn array_index(segment: &str, len: usize) -> Option<usize> {
    segment.parse().ok().filter(|&index| index < len)
}

impl FromStr for FieldPath {
    type Err = FieldPathError;

    fn from_str(path: &str) -> Result<Self, Self::Err> {
        Self::parse(path)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.segments.join("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(text: &str) -> FieldPath {
        FieldPath::parse(text).unwrap()
    }

    #[test]
    fn parse_with_empty_segments_fails() {
        assert_eq!(FieldPath::parse(""), Err(FieldPathError::Empty));
        for text in [".a", "a.", "a..b"] {
            assert_eq!(
                FieldPath::parse(text),
                Err(FieldPathError::EmptySegment {
                    path: text.to_owned()
                })
            );
        }
    }

    #[test]
    fn get_with_nested_objects_and_arrays_finds_value() {
        let document = json!({"sensor": {"temp": 21.5, "tags": ["a", "b"]}});
        assert_eq!(path("sensor.temp").get(&document), Some(&json!(21.5)));
        assert_eq!(path("sensor.tags.1").get(&document), Some(&json!("b")));
        assert_eq!(path("sensor.tags.2").get(&document), None);
        assert_eq!(path("sensor.temp.x").get(&document), None);
        assert_eq!(path("missing").get(&document), None);
    }

    #[test]
    fn get_mut_with_existing_path_allows_rewrite() {
        let mut document = json!({"a": [{"b": 1}]});
        *path("a.0.b").get_mut(&mut document).unwrap() = json!(2);
        assert_eq!(document, json!({"a": [{"b": 2}]}));
        assert!(path("a.1.b").get_mut(&mut document).is_none());
    }

    #[test]
    fn remove_from_object_and_array_returns_removed() {
        let mut document = json!({"a": {"b": 1, "c": 2}, "l": [1, 2, 3]});
        assert_eq!(path("a.b").remove(&mut document), Some(json!(1)));
        assert_eq!(path("l.0").remove(&mut document), Some(json!(1)));
        assert_eq!(path("a.zz").remove(&mut document), None);
        assert_eq!(path("a.c.d").remove(&mut document), None);
        assert_eq!(document, json!({"a": {"c": 2}, "l": [2, 3]}));
    }

    #[test]
    fn display_after_parse_round_trips() {
        assert_eq!(path("a.b.0").to_string(), "a.b.0");
        assert_eq!("a.b".parse::<FieldPath>(), Ok(path("a.b")));
    }
}
