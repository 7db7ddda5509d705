//! Test plugin (transform): the "version 2" build the broker's hot-swap
//! test replaces `tag-version` with. It stamps header `plugin-version: 2`
//! on every record, whatever the parameters, so a record shows which
//! build handled it.

use edgebus_plugin::prelude::*;

/// Stamps each record with `plugin-version: 2`.
pub struct TagVersionTwo;

impl Transform for TagVersionTwo {
    fn init(_params: &Params) -> Result<Self, String> {
        Ok(TagVersionTwo)
    }

    fn transform(&mut self, mut record: Record) -> Result<Vec<Record>, String> {
        record.set_header("plugin-version", "2");
        Ok(vec![record])
    }
}

export_transform!(TagVersionTwo);

#[cfg(test)]
mod tests {
    use super::*;
    use edgebus_plugin::testing::run_transform;

    #[test]
    fn transform_stamps_version_two_whatever_the_params() {
        let outputs =
            run_transform::<TagVersionTwo>(&[("version", "1")], vec![Record::new("v")]).unwrap();
        assert_eq!(
            outputs,
            vec![vec![Record::new("v").with_header("plugin-version", "2")]]
        );
    }
}
