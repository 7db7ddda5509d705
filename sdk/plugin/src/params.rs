//! [`Params`], the `key=value` settings a plugin is attached with, and
//! [`ParamError`], what `init` reports when they are wrong.
//!
//! Operators write parameters on a command line (`--param every=10`), so
//! every getter names the parameter and the offending text in its error:
//! the message is shown to the operator as is and must say what to fix.

use std::fmt::Display;
use std::str::FromStr;

/// Why a parameter was rejected. Converts into the `String` that
/// [`Filter::init`](crate::Filter::init) and
/// [`Transform::init`](crate::Transform::init) return, so `?` works there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParamError {
    /// A required parameter was not given.
    #[error("missing required parameter `{key}`")]
    Missing {
        /// The parameter's name.
        key: String,
    },
    /// A parameter was given a value the plugin cannot use.
    #[error("parameter `{key}`: invalid value `{value}`: {reason}")]
    Invalid {
        /// The parameter's name.
        key: String,
        /// The value as the operator wrote it.
        value: String,
        /// What was expected instead.
        reason: String,
    },
    /// A parameter the plugin does not know, usually a typo.
    #[error("unknown parameter `{key}` (accepted: {accepted})")]
    Unknown {
        /// The parameter's name.
        key: String,
        /// The accepted names, comma-separated.
        accepted: String,
    },
}

impl ParamError {
    /// An [`Invalid`](Self::Invalid) error, for checks a plugin does itself.
    pub fn invalid(key: &str, value: &str, reason: impl Display) -> Self {
        Self::Invalid {
            key: key.to_owned(),
            value: value.to_owned(),
            reason: reason.to_string(),
        }
    }
}

impl From<ParamError> for String {
    fn from(error: ParamError) -> Self {
        error.to_string()
    }
}

/// The parameters given where a plugin is attached
/// (`--ingest NAME:key=value`, `--param key=value`), in the order given.
///
/// A name given twice takes its last value, as a later flag overrides an
/// earlier one on a command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    entries: Vec<(String, String)>,
}

impl Params {
    /// No parameters.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `key`, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }

    /// The value of `key`, or [`ParamError::Missing`].
    pub fn require(&self, key: &str) -> Result<&str, ParamError> {
        self.get(key).ok_or_else(|| ParamError::Missing {
            key: key.to_owned(),
        })
    }

    /// `key` as an unsigned integer, if given.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, ParamError> {
        self.parse(key, "expected an unsigned integer")
    }

    /// `key` as a signed integer, if given.
    pub fn get_i64(&self, key: &str) -> Result<Option<i64>, ParamError> {
        self.parse(key, "expected an integer")
    }

    /// `key` as `true` or `false`, if given.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, ParamError> {
        self.parse(key, "expected `true` or `false`")
    }

    /// `key` parsed as any [`FromStr`] type, or `default` when not given.
    /// The error carries the type's own parse message.
    pub fn parse_or<T>(&self, key: &str, default: T) -> Result<T, ParamError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.get(key) {
            Some(value) => value
                .trim()
                .parse()
                .map_err(|error| ParamError::invalid(key, value, error)),
            None => Ok(default),
        }
    }

    /// `key` as a comma-separated list, if given. Items are trimmed and
    /// empty items dropped, so `a, b,` is `["a", "b"]`.
    pub fn get_list(&self, key: &str) -> Option<Vec<&str>> {
        self.get(key).map(|value| {
            value
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .collect()
        })
    }

    /// Fails on the first parameter not in `accepted`. Plugins call this in
    /// `init` so that a misspelt parameter is an error rather than a
    /// silently applied default.
    pub fn reject_unknown(&self, accepted: &[&str]) -> Result<(), ParamError> {
        match self
            .entries
            .iter()
            .find(|(name, _)| !accepted.contains(&name.as_str()))
        {
            Some((name, _)) => Err(ParamError::Unknown {
                key: name.clone(),
                accepted: accepted.join(", "),
            }),
            None => Ok(()),
        }
    }

    /// Every parameter in the order given, repeats included.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }

    /// Whether no parameter was given.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn parse<T: FromStr>(&self, key: &str, expected: &str) -> Result<Option<T>, ParamError> {
        self.get(key)
            .map(|value| {
                value
                    .trim()
                    .parse()
                    .map_err(|_| ParamError::invalid(key, value, expected))
            })
            .transpose()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Params {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self {
            entries: iter
                .into_iter()
                .map(|(key, value)| (key.into(), value.into()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        pairs.iter().copied().collect()
    }

    #[test]
    fn get_with_repeated_key_returns_last() {
        let params = params(&[("a", "1"), ("a", "2")]);
        assert_eq!(params.get("a"), Some("2"));
        assert_eq!(params.get("b"), None);
    }

    #[test]
    fn require_when_missing_names_the_key() {
        let error = params(&[]).require("field").unwrap_err();
        assert_eq!(error.to_string(), "missing required parameter `field`");
    }

    #[test]
    fn get_u64_with_text_explains_expected_type() {
        let error = params(&[("every", "ten")]).get_u64("every").unwrap_err();
        assert_eq!(
            error.to_string(),
            "parameter `every`: invalid value `ten`: expected an unsigned integer"
        );
    }

    #[test]
    fn typed_getters_with_valid_values_parse() {
        let params = params(&[("n", " 10 "), ("i", "-3"), ("b", "true")]);
        assert_eq!(params.get_u64("n"), Ok(Some(10)));
        assert_eq!(params.get_i64("i"), Ok(Some(-3)));
        assert_eq!(params.get_bool("b"), Ok(Some(true)));
        assert_eq!(params.get_u64("absent"), Ok(None));
    }

    #[test]
    fn parse_or_without_value_returns_default() {
        let params = params(&[("min", "35.5")]);
        assert_eq!(params.parse_or("min", 30.0), Ok(35.5));
        assert_eq!(params.parse_or("absent", 30.0), Ok(30.0));
    }

    #[test]
    fn parse_or_with_bad_value_reports_type_error() {
        let params = params(&[("bad", "warm")]);
        assert_eq!(
            params.parse_or("bad", 30.0).unwrap_err().to_string(),
            "parameter `bad`: invalid value `warm`: invalid float literal"
        );
    }

    #[test]
    fn get_bool_with_other_word_is_invalid() {
        assert!(params(&[("b", "yes")]).get_bool("b").is_err());
    }

    #[test]
    fn get_list_with_spaces_and_empty_items_trims_and_drops() {
        let params = params(&[("fields", " a, b.c ,,")]);
        assert_eq!(params.get_list("fields"), Some(vec!["a", "b.c"]));
        assert_eq!(params.get_list("absent"), None);
    }

    #[test]
    fn reject_unknown_with_typo_lists_accepted_names() {
        let error = params(&[("feild", "x")])
            .reject_unknown(&["field", "op"])
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown parameter `feild` (accepted: field, op)"
        );
        assert!(
            params(&[("op", "==")])
                .reject_unknown(&["field", "op"])
                .is_ok()
        );
    }

    #[test]
    fn param_error_into_string_keeps_message() {
        let message: String = ParamError::invalid("k", "v", "why").into();
        assert_eq!(message, "parameter `k`: invalid value `v`: why");
    }
}
