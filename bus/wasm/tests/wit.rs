//! The WIT package versions the host serves: 0.1 components built before
//! 0.2 existed still load and run, and 0.2's expiring state, bounded
//! listing and budget import work through a real guest.

mod common;

use std::sync::{Arc, Mutex};

use common::{engine, engine_with, params, plugin_wasm};
use edgebus_wasm::{
    Budgets, Chain, EngineConfig, MemState, PluginKind, PluginRecord, StateStore, WitVersion,
};

/// `plugins/dedupe` and `plugins/redact` as bundled at 9069ce9, built
/// against `edgebus:plugin@0.1.0`, before the SDK moved to 0.2.
const DEDUPE_0_1: &[u8] = include_bytes!("fixtures/dedupe-0.1.wasm");
const REDACT_0_1: &[u8] = include_bytes!("fixtures/redact-0.1.wasm");

fn keyed(key: &str, timestamp_ms: i64) -> PluginRecord {
    PluginRecord {
        key: Some(key.as_bytes().to_vec().into()),
        timestamp_ms,
        ..PluginRecord::with_value("v")
    }
}

fn keys_of(outputs: &[Vec<PluginRecord>]) -> Vec<String> {
    outputs
        .iter()
        .flatten()
        .map(|r| String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned())
        .collect()
}

#[test]
fn wit_0_1_filter_with_state_loads_and_runs_on_this_host() {
    let plugin = engine().load(DEDUPE_0_1).expect("a 0.1 component loads");
    assert_eq!(plugin.wit_version(), WitVersion::V0_1);
    assert_eq!(plugin.kind(), PluginKind::Filter);
    let state = Arc::new(Mutex::new(MemState::new()));
    let mut instance = plugin
        .instantiate(
            "dedupe-0.1",
            &params(&[("window_ms", "100")]),
            Box::new(state.clone()),
        )
        .expect("instantiate");
    let batch = [
        keyed("a", 0),
        keyed("a", 50),
        keyed("b", 60),
        keyed("a", 100),
    ];
    let outputs = instance.process(&batch).expect("process");
    assert_eq!(keys_of(&outputs), ["a", "b", "a"]);
    let stored = state.lock().expect("state").entries().len();
    assert_eq!(stored, 2, "0.1 state reads and writes reach the store");
}

#[test]
fn wit_0_1_transform_loads_and_runs_on_this_host() {
    let plugin = engine().load(REDACT_0_1).expect("a 0.1 component loads");
    assert_eq!(plugin.wit_version(), WitVersion::V0_1);
    assert_eq!(plugin.kind(), PluginKind::Transform);
    let mut instance = plugin
        .instantiate(
            "redact-0.1",
            &params(&[("fields", "pin")]),
            Box::new(MemState::new()),
        )
        .expect("instantiate");
    let outputs = instance
        .process(&[PluginRecord::with_value(r#"{"pin":"1234","n":1}"#)])
        .expect("process");
    let value = String::from_utf8_lossy(&outputs[0][0].value).into_owned();
    assert!(value.contains(r#""pin":"***""#), "{value}");
}

#[test]
fn bundled_plugins_built_from_this_sdk_are_wit_0_2() {
    let plugin = engine().load(&plugin_wasm("dedupe")).expect("load");
    assert_eq!(plugin.wit_version(), WitVersion::V0_2);
}

/// Runs `commands` through a state-probe chain, one batch each, the batch's
/// records stamped `at_ms`; returns the answers.
fn probe(chain: &mut Chain, at_ms: i64, commands: &[&str]) -> Vec<String> {
    let batch = commands
        .iter()
        .map(|c| PluginRecord {
            timestamp_ms: at_ms,
            ..PluginRecord::with_value(c.as_bytes().to_vec())
        })
        .collect();
    let out = chain.process(batch);
    assert_eq!(out.failed, vec![], "no failures");
    assert_eq!(out.rejected, None);
    out.outputs
        .into_iter()
        .map(|(_, r)| String::from_utf8_lossy(&r.value).into_owned())
        .collect()
}

#[test]
fn wit_0_2_expiring_keys_vanish_at_event_time_and_free_the_budget() {
    let engine = engine_with(EngineConfig {
        budgets: Budgets {
            state_max_keys: 3,
            ..Budgets::default()
        },
        ..EngineConfig::default()
    });
    let plugin = engine.load(&plugin_wasm("state_probe")).expect("load");
    let state = Arc::new(Mutex::new(MemState::new()));
    let mut chain = Chain::new(vec![(
        plugin,
        "probe".into(),
        vec![],
        Box::new(state.clone()) as Box<dyn StateStore>,
    )])
    .expect("chain");
    assert_eq!(
        probe(
            &mut chain,
            1_000,
            &["expire a 1 500", "expire b 2 500", "set c 3"]
        ),
        ["ok", "ok", "ok"]
    );
    assert_eq!(
        probe(&mut chain, 1_499, &["get a", "list  - 10"]),
        ["1", "a,b,c"]
    );
    let out = chain.process(vec![PluginRecord {
        timestamp_ms: 1_499,
        ..PluginRecord::with_value("set d 4")
    }]);
    assert_eq!(out.failed.len(), 1, "a fourth key is over the 3-key budget");
    assert_eq!(
        probe(&mut chain, 1_500, &["get a", "list  - 10", "set d 4"]),
        ["none", "c", "ok"],
        "expired at 1500, and their room is free again"
    );
    let entries = state.lock().expect("state").entries().clone();
    assert_eq!(entries.len(), 2, "expired keys left the store: {entries:?}");
}

#[test]
fn wit_0_2_list_pages_after_a_key_and_caps_the_page() {
    let plugin = engine().load(&plugin_wasm("state_probe")).expect("load");
    let mut chain = Chain::new(vec![(
        plugin,
        "probe".into(),
        vec![],
        Box::new(MemState::new()) as Box<dyn StateStore>,
    )])
    .expect("chain");
    let sets: Vec<String> = (0..5).map(|i| format!("set k{i} v")).collect();
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    probe(&mut chain, 0, &sets);
    assert_eq!(
        probe(
            &mut chain,
            0,
            &["list k - 2", "list k k1 2", "list k k3 2", "list x - 5"]
        ),
        ["k0,k1", "k2,k3", "k4", ""]
    );
}

#[test]
fn wit_0_2_budget_import_reports_the_room_left() {
    let engine = engine_with(EngineConfig {
        budgets: Budgets {
            state_max_bytes: 1000,
            state_max_keys: 10,
            output_records_per_input: 4,
            ..Budgets::default()
        },
        ..EngineConfig::default()
    });
    let plugin = engine.load(&plugin_wasm("state_probe")).expect("load");
    let mut chain = Chain::new(vec![(
        plugin,
        "probe".into(),
        vec![],
        Box::new(MemState::new()) as Box<dyn StateStore>,
    )])
    .expect("chain");
    probe(&mut chain, 0, &["set key value"]);
    let room = probe(&mut chain, 0, &["budget", "budget"]);
    let fields: Vec<u64> = room[0]
        .split(',')
        .map(|f| f.parse().expect("u64"))
        .collect();
    assert_eq!(
        &fields[..3],
        [992, 9, 8],
        "1000 - 8 bytes, 10 - 1 keys, 2 inputs × 4"
    );
    assert_eq!(
        fields[3],
        (64 << 10),
        "the output byte floor for a small batch"
    );
}
