//! Plugins in a chain: failure isolation, rejection, fan-out, hot swap.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{engine, engine_with, params, plugin_wasm, records, values};
use edgebus_wasm::{
    Breach, Budgets, Chain, ChainError, EngineConfig, MemState, Plugin, PluginError, StageSpec,
};

/// A small cap, so hogs fail fast.
const HOG_MEMORY_MAX_BYTES: usize = 16 * 1024 * 1024;

fn load(name: &str) -> Plugin {
    engine().load(&plugin_wasm(name)).expect("load")
}

fn stage(plugin: &Plugin, name: &str, pairs: &[(&str, &str)]) -> StageSpec {
    (
        plugin.clone(),
        name.to_string(),
        params(pairs),
        Box::new(MemState::new()),
    )
}

fn header(record: &edgebus_wasm::PluginRecord, name: &str) -> Option<String> {
    record
        .header(name)
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

#[test]
fn chain_trap_in_one_record_fails_only_that_record() {
    let mut chain = Chain::new(vec![
        stage(&load("trap_on"), "trap", &[]),
        stage(&load("tag_version"), "tag", &[("version", "3")]),
    ])
    .expect("chain");

    let output = chain.process(records(&["a", "b boom", "c", "boom again", "d"]));

    let failed: Vec<(usize, &str)> = output
        .failed
        .iter()
        .map(|(index, name, error)| {
            assert!(matches!(error, PluginError::Trap(_)), "{error:?}");
            (*index, name.as_str())
        })
        .collect();
    assert_eq!(failed, vec![(1, "trap"), (3, "trap")]);
    let indices: Vec<usize> = output.outputs.iter().map(|(index, _)| *index).collect();
    assert_eq!(indices, vec![0, 2, 4]);
    assert_eq!(
        values(output.outputs.iter().map(|(_, record)| record)),
        vec!["a", "c", "d"]
    );
    assert!(
        output
            .outputs
            .iter()
            .all(|(_, record)| header(record, "plugin-version").as_deref() == Some("3"))
    );
    assert_eq!(
        output.replaced, 3,
        "the batch's instance, then one per failing record"
    );
    assert_eq!(output.rejected, None);

    let next = chain.process(records(&["e"]));
    assert_eq!(values(next.outputs.iter().map(|(_, r)| r)), vec!["e"]);
    assert!(next.failed.is_empty());
}

#[test]
fn chain_spin_deadline_fails_record_and_next_batch_still_runs() {
    let mut chain = Chain::new(vec![stage(&load("spin"), "spin", &[])]).expect("chain");

    for _ in 0..2 {
        let started = Instant::now();
        let output = chain.process(records(&["x"]));
        let elapsed = started.elapsed();
        assert_eq!(
            output.failed,
            vec![(
                0,
                "spin".to_string(),
                PluginError::Deadline(Duration::from_millis(50))
            )]
        );
        assert!(output.outputs.is_empty());
        assert_eq!(output.replaced, 1);
        // The deadline stopped it (50 ms), not the spin ending: a loaded
        // box delays the interrupt and the respawn by tens of ms, so the
        // bound is loose, as in plugin.rs.
        assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    }
}

/// A plugin that burns its deadline on every call gets its failing-time
/// budget (here 20 ms of CPU a second, bursts of 100 ms) and no more:
/// past it, its batches fail at once without a call.
#[test]
fn chain_failing_calls_stop_getting_calls_once_their_time_budget_is_spent() {
    let engine = engine_with(EngineConfig {
        budgets: Budgets {
            failing_ms_per_second: 20,
            ..Budgets::default()
        },
        ..EngineConfig::default()
    });
    let spin = engine.load(&plugin_wasm("spin")).expect("load");
    let mut chain = Chain::new(vec![stage(&spin, "spin", &[])]).expect("chain");
    let errors: Vec<PluginError> = (0..40)
        .map(|_| {
            let output = chain.process(records(&["x"]));
            assert!(output.outputs.is_empty());
            output.failed.into_iter().next().expect("a failure").2
        })
        .collect();
    let deadlines = errors
        .iter()
        .take_while(|e| matches!(e, PluginError::Deadline(_)))
        .count();
    // Two 50 ms calls spend the burst when they get the CPU to
    // themselves; calls starved by a busy machine are charged only the
    // CPU they used, so more fit.
    assert!(
        (2..40).contains(&deadlines),
        "{deadlines} calls: {errors:?}"
    );
    assert!(
        errors[deadlines..].iter().all(|e| matches!(
            e,
            PluginError::Budget(Breach::FailingTime { per_second_ms: 20 })
        )),
        "{errors:?}"
    );
}

#[test]
fn chain_guest_err_rejects_whole_batch_and_drops_state_writes() {
    let rejecting = engine()
        .load(&wat::parse_str(common::REJECTING_FILTER_WAT).expect("wat"))
        .expect("load");
    let counts = Arc::new(Mutex::new(MemState::new()));
    let mut chain = Chain::new(vec![
        (
            load("downsample"),
            "sample".to_string(),
            params(&[("every", "2")]),
            Box::new(Arc::clone(&counts)),
        ),
        stage(&rejecting, "gate", &[]),
    ])
    .expect("chain");

    let output = chain.process(records(&["1", "2", "3"]));

    assert_eq!(
        output.rejected,
        Some(("gate".to_string(), "wat rejected!".to_string()))
    );
    assert!(output.outputs.is_empty());
    assert!(output.failed.is_empty());
    assert!(
        counts.lock().expect("state lock").is_empty(),
        "a rejected batch must leave no state behind"
    );
}

#[test]
fn chain_fan_out_keeps_origin_input_index() {
    let mut chain = Chain::new(vec![stage(
        &load("csv_to_json"),
        "csv",
        &[("columns", "n")],
    )])
    .expect("chain");

    let output = chain.process(records(&["1\n2\n3", "", "4"]));

    let indexed: Vec<(usize, String)> = output
        .outputs
        .iter()
        .map(|(index, record)| (*index, String::from_utf8_lossy(&record.value).into_owned()))
        .collect();
    assert_eq!(
        indexed,
        vec![
            (0, r#"{"n":"1"}"#.to_string()),
            (0, r#"{"n":"2"}"#.to_string()),
            (0, r#"{"n":"3"}"#.to_string()),
            (2, r#"{"n":"4"}"#.to_string()),
        ]
    );
    assert_eq!(output.filtered, 1);
}

#[test]
fn chain_replace_takes_effect_from_next_batch() {
    let mut chain =
        Chain::new(vec![stage(&load("trap_on"), "stamp", &[("version", "9")])]).expect("chain");
    let before = chain.process(records(&["a"]));
    assert_eq!(header(&before.outputs[0].1, "plugin-version"), None);

    chain.replace(0, load("tag_version")).expect("replace");
    let after = chain.process(records(&["b"]));

    assert_eq!(
        header(&after.outputs[0].1, "plugin-version").as_deref(),
        Some("9"),
        "the new version runs with the stage's params"
    );
    assert_eq!(chain.names().collect::<Vec<_>>(), vec!["stamp"]);
}

#[test]
fn chain_replace_carries_state_to_new_version() {
    let downsample = load("downsample");
    let mut chain =
        Chain::new(vec![stage(&downsample, "sample", &[("every", "3")])]).expect("chain");
    let first = chain.process(records(&["1", "2"]));

    chain.replace(0, downsample.clone()).expect("replace");
    let second = chain.process(records(&["3", "4", "5", "6", "7"]));

    assert_eq!(values(first.outputs.iter().map(|(_, r)| r)), vec!["1"]);
    assert_eq!(
        values(second.outputs.iter().map(|(_, r)| r)),
        vec!["4", "7"]
    );
}

#[test]
fn chain_replace_with_failing_init_keeps_old_version_running() {
    let mut chain = Chain::new(vec![stage(
        &load("tag_version"),
        "tag",
        &[("version", "5")],
    )])
    .expect("chain");

    let error = chain
        .replace(0, load("init_fails"))
        .expect_err("init_fails cannot start");

    assert!(
        matches!(
            &error,
            ChainError::Stage {
                position: 0,
                error: PluginError::Init(_),
                ..
            }
        ),
        "{error:?}"
    );
    let output = chain.process(records(&["a"]));
    assert_eq!(
        header(&output.outputs[0].1, "plugin-version").as_deref(),
        Some("5")
    );
    assert!(matches!(
        chain.replace(4, load("tag_version")),
        Err(ChainError::NoStage {
            position: 4,
            len: 1
        })
    ));
}

#[test]
fn chain_new_with_failing_init_names_the_stage() {
    let error = Chain::new(vec![
        stage(&load("tag_version"), "tag", &[]),
        stage(&load("init_fails"), "broken", &[]),
    ])
    .err()
    .expect("init_fails cannot start");
    assert!(
        matches!(&error, ChainError::Stage { position: 1, name, .. } if name == "broken"),
        "{error:?}"
    );
}

#[test]
fn chain_memory_hog_reports_memory_limit_per_record() {
    let engine = engine_with(EngineConfig {
        memory_max_bytes: HOG_MEMORY_MAX_BYTES,
        // The memory limit is what is tested: on a loaded two-core box a
        // debug build can take longer than the default 50 ms to grow 16 MiB.
        deadline: Duration::from_secs(5),
        ..EngineConfig::default()
    });
    let plugin = engine.load(&plugin_wasm("memory_hog")).expect("load");
    let mut chain = Chain::new(vec![(
        plugin,
        "hog".to_string(),
        Vec::new(),
        Box::new(MemState::new()),
    )])
    .expect("chain");

    let output = chain.process(records(&["a", "b"]));

    let failed: Vec<(usize, PluginError)> = output
        .failed
        .into_iter()
        .map(|(index, _, error)| (index, error))
        .collect();
    assert_eq!(
        failed,
        vec![
            (0, PluginError::MemoryLimit(HOG_MEMORY_MAX_BYTES)),
            (1, PluginError::MemoryLimit(HOG_MEMORY_MAX_BYTES)),
        ]
    );
}

#[test]
fn chain_output_over_budget_fails_the_batch_without_one_record_retries() {
    let mut chain =
        Chain::new(vec![stage(&load("amplify"), "amp", &[("copies", "5000")])]).expect("chain");
    let output = chain.process(records(&["a", "b", "c"]));
    assert!(output.outputs.is_empty());
    assert_eq!(output.failed.len(), 3);
    assert!(
        output
            .failed
            .iter()
            .all(|(_, _, e)| matches!(e, PluginError::Budget(Breach::OutputRecords { max: 3072 }))),
        "{:?}",
        output.failed[0].2
    );
    assert_eq!(output.replaced, 0, "a breach is not retried");
}

#[test]
fn chain_log_budget_holds_across_replaced_instances() {
    let mut chain = Chain::new(vec![stage(
        &load("log_flood"),
        "flood",
        &[("lines", "100")],
    )])
    .expect("chain");
    let inputs: Vec<String> = (0..40).map(|i| format!("r{i}")).collect();
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let started = Instant::now();
    let output = chain.process(records(&inputs));
    let seconds = started.elapsed().as_secs() + 1;
    assert_eq!(output.failed.len(), 40);
    assert_eq!(output.replaced, 41, "the batch call, then one per record");
    // A burst of five seconds at 20 lines a second, plus what the
    // seconds this took refilled (about one; more on a loaded box).
    let most = 100 + 20 * seconds;
    assert!(
        output.log_lines <= most,
        "{} lines in {seconds} s",
        output.log_lines
    );
    assert!(output.log_lines_dropped >= 4_000 - most);
}
