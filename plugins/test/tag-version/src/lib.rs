//! Test plugin (transform): sets header `plugin-version` on every record to
//! the `version` parameter (default `1`), replacing any header of that name.
//!
//! The broker's hot-swap tests attach it with different `version`s and tell
//! from the header which instance handled a record, so nothing about the
//! version is compiled in. Other parameters are ignored.

use edgebus_plugin::prelude::*;

/// The header this plugin sets.
pub const HEADER: &str = "plugin-version";

/// Stamps each record with the configured version.
pub struct TagVersion {
    version: String,
}

impl Transform for TagVersion {
    fn init(params: &Params) -> Result<Self, String> {
        Ok(TagVersion {
            version: params.get("version").unwrap_or("1").to_owned(),
        })
    }

    fn transform(&mut self, mut record: Record) -> Result<Vec<Record>, String> {
        record.set_header(HEADER, self.version.as_bytes());
        Ok(vec![record])
    }
}

export_transform!(TagVersion);

#[cfg(test)]
mod tests {
    use super::*;
    use edgebus_plugin::testing::run_transform;

    #[test]
    fn transform_without_params_sets_version_one() {
        let outputs = run_transform::<TagVersion>(&[], vec![Record::new("v")]).unwrap();
        assert_eq!(
            outputs,
            vec![vec![Record::new("v").with_header(HEADER, "1")]]
        );
    }

    #[test]
    fn transform_with_version_replaces_existing_header() {
        let input = Record::new("v")
            .with_key("k")
            .with_header(HEADER, "old")
            .with_header("other", "x");
        let outputs = run_transform::<TagVersion>(&[("version", "7")], vec![input]).unwrap();
        let expected = Record::new("v")
            .with_key("k")
            .with_header("other", "x")
            .with_header(HEADER, "7");
        assert_eq!(outputs, vec![vec![expected]]);
    }

    #[test]
    fn transform_with_empty_batch_returns_no_outputs() {
        let outputs = run_transform::<TagVersion>(&[("version", "2")], vec![]).unwrap();
        assert!(outputs.is_empty());
    }
}
