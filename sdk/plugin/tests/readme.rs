//! The plugin shown in the repository README and in `sdk/plugin/README.md`
//! compiles and behaves as described there.

use edgebus_plugin::prelude::*;
use edgebus_plugin::testing::run_filter;

struct OnlyHot {
    min: f64,
}

impl Filter for OnlyHot {
    fn init(params: &Params) -> Result<Self, String> {
        Ok(OnlyHot {
            min: params.parse_or("min", 30.0)?,
        })
    }
    fn filter(&mut self, record: &Record) -> Result<bool, String> {
        Ok(record
            .json()?
            .get("celsius")
            .and_then(|v| v.as_f64())
            .is_some_and(|c| c >= self.min))
    }
}

export_filter!(OnlyHot);

#[test]
fn only_hot_with_min_keeps_hot_records() {
    let batch = [
        Record::new(r#"{"celsius": 36}"#),
        Record::new(r#"{"celsius": 20}"#),
        Record::new(r#"{"fahrenheit": 99}"#),
    ];
    assert_eq!(
        run_filter::<OnlyHot>(&[("min", "35")], &batch),
        Ok(vec![true, false, false])
    );
}

#[test]
fn only_hot_with_non_json_record_fails_batch() {
    let error = run_filter::<OnlyHot>(&[], &[Record::new("hot!")]).unwrap_err();
    assert!(error.starts_with("record value is not JSON"), "{error}");
}
