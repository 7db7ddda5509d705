//! The test harnesses behave like the broker: one state per attachment,
//! state kept across restarts, log captured, malformed answers rejected.

use edgebus_plugin::log::Level;
use edgebus_plugin::prelude::*;
use edgebus_plugin::testing::{
    FilterHarness, LogLine, TransformHarness, run_filter, run_transform,
};

/// Counts records per harness in state and keeps every `keep_every`th.
struct Counter {
    keep_every: u64,
}

impl Filter for Counter {
    fn init(params: &Params) -> Result<Self, String> {
        log::info("counter ready");
        Ok(Counter {
            keep_every: params.get_u64("keep_every")?.unwrap_or(1),
        })
    }

    fn filter(&mut self, _record: &Record) -> Result<bool, String> {
        let seen = state::get_u64(b"seen")?.unwrap_or(0);
        state::set_u64(b"seen", seen + 1);
        Ok(seen % self.keep_every == 0)
    }
}

export_filter!(Counter);

/// Repeats each record `times` times; a batch answer of the wrong length
/// when `broken` is set.
struct Repeat {
    times: u64,
    broken: bool,
}

impl Transform for Repeat {
    fn init(params: &Params) -> Result<Self, String> {
        Ok(Repeat {
            times: params.get_u64("times")?.unwrap_or(1),
            broken: params.get_bool("broken")?.unwrap_or(false),
        })
    }

    fn transform(&mut self, record: Record) -> Result<Vec<Record>, String> {
        Ok((0..self.times).map(|_| record.clone()).collect())
    }

    fn transform_batch(&mut self, batch: Vec<Record>) -> Result<Vec<Vec<Record>>, String> {
        if self.broken {
            return Ok(Vec::new());
        }
        batch.into_iter().map(|r| self.transform(r)).collect()
    }
}

export_transform!(Repeat);

/// Answers every batch with a single flag.
struct OneFlag;

impl Filter for OneFlag {
    fn init(_params: &Params) -> Result<Self, String> {
        Ok(OneFlag)
    }

    fn filter(&mut self, _record: &Record) -> Result<bool, String> {
        Ok(true)
    }

    fn filter_batch(&mut self, _batch: &[Record]) -> Result<Vec<bool>, String> {
        Ok(vec![true])
    }
}

fn records(n: usize) -> Vec<Record> {
    (0..n).map(|i| Record::new(i.to_string())).collect()
}

#[test]
fn run_filter_with_params_returns_mask() {
    let mask = run_filter::<Counter>(&[("keep_every", "2")], &records(4));
    assert_eq!(mask, Ok(vec![true, false, true, false]));
}

#[test]
fn run_filter_with_bad_param_returns_init_error() {
    let error = run_filter::<Counter>(&[("keep_every", "x")], &records(1)).unwrap_err();
    assert_eq!(
        error,
        "parameter `keep_every`: invalid value `x`: expected an unsigned integer"
    );
}

#[test]
fn harnesses_in_one_test_keep_separate_state() {
    let mut first = FilterHarness::<Counter>::new(&[]).unwrap();
    let mut second = FilterHarness::<Counter>::new(&[]).unwrap();
    first.filter(&records(3)).unwrap();
    second.filter(&records(1)).unwrap();
    assert_eq!(
        first.state().get(&b"seen"[..]),
        Some(&3u64.to_be_bytes().to_vec())
    );
    assert_eq!(
        second.state().get(&b"seen"[..]),
        Some(&1u64.to_be_bytes().to_vec())
    );
}

#[test]
fn harness_after_restart_keeps_state() {
    let mut harness = FilterHarness::<Counter>::new(&[("keep_every", "2")]).unwrap();
    assert_eq!(harness.filter(&records(1)), Ok(vec![true]));
    harness.restart().unwrap();
    assert_eq!(harness.filter(&records(2)), Ok(vec![false, true]));
}

#[test]
fn harness_logs_capture_init_lines() {
    let mut harness = FilterHarness::<Counter>::new(&[]).unwrap();
    harness.restart().unwrap();
    let ready = LogLine {
        level: Level::Info,
        message: "counter ready".to_owned(),
    };
    assert_eq!(harness.logs(), &[ready.clone(), ready]);
}

#[test]
fn filter_batch_with_wrong_mask_length_is_error() {
    let error = run_filter::<OneFlag>(&[], &records(3)).unwrap_err();
    assert_eq!(error, "filter_batch returned 1 flags for 3 records");
}

#[test]
fn run_transform_with_fan_out_returns_outputs_per_input() {
    let outputs = run_transform::<Repeat>(&[("times", "2")], records(2)).unwrap();
    assert_eq!(outputs.len(), 2);
    assert_eq!(outputs[1], vec![Record::new("1"), Record::new("1")]);
}

#[test]
fn transform_batch_with_wrong_output_count_is_error() {
    let mut harness = TransformHarness::<Repeat>::new(&[("broken", "true")]).unwrap();
    let error = harness.transform(records(2)).unwrap_err();
    assert_eq!(error, "transform_batch returned 0 outputs for 2 records");
    assert!(harness.state().is_empty());
    assert!(harness.logs().is_empty());
}
