//! Loading, instantiating and calling single plugins.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{engine, engine_with, params, plugin_wasm, records, values};
use edgebus_wasm::{
    BatchOutput, Engine, EngineConfig, MemState, PluginError, PluginKind, PluginRecord,
};

#[test]
fn json_filter_with_params_keeps_matching_records() {
    let plugin = engine().load(&plugin_wasm("json_filter")).expect("load");
    assert_eq!(plugin.kind(), PluginKind::Filter);
    let mut instance = plugin
        .instantiate(
            "hot",
            &params(&[("field", "temp"), ("op", ">="), ("value", "30")]),
            Box::new(MemState::new()),
        )
        .expect("instantiate");
    let batch = records(&[
        r#"{"temp": 31}"#,
        r#"{"temp": 12}"#,
        "not json",
        r#"{"temp": 30.0}"#,
    ]);

    let outputs = instance.process(&batch).expect("process");

    assert_eq!(
        outputs,
        vec![
            vec![batch[0].clone()],
            vec![],
            vec![],
            vec![batch[3].clone()]
        ]
    );
    assert_eq!(
        instance.call(&batch),
        Ok(BatchOutput::Keep(vec![true, false, false, true]))
    );
}

#[test]
fn json_filter_with_bad_op_fails_init_with_guest_message() {
    let plugin = engine().load(&plugin_wasm("json_filter")).expect("load");
    let error = plugin
        .instantiate(
            "bad",
            &params(&[("field", "temp"), ("op", "~"), ("value", "1")]),
            Box::new(MemState::new()),
        )
        .expect_err("init must refuse op `~`");
    assert!(
        matches!(&error, PluginError::Init(message) if message.contains("op")),
        "{error:?}"
    );
}

#[test]
fn redact_transform_masks_fields_and_clears_offsets() {
    let plugin = engine().load(&plugin_wasm("redact")).expect("load");
    assert_eq!(plugin.kind(), PluginKind::Transform);
    let mut instance = plugin
        .instantiate(
            "redact",
            &params(&[("fields", "password,user.ssn")]),
            Box::new(MemState::new()),
        )
        .expect("instantiate");
    let input = PluginRecord {
        key: Some(Bytes::from_static(b"k")),
        value: Bytes::from_static(br#"{"user":{"name":"ann","ssn":"123"},"password":"hunter2"}"#),
        headers: vec![("h".to_string(), Bytes::from_static(b"v"))],
        timestamp_ms: 42,
        offset: Some(7),
        partition: Some(1),
    };

    let outputs = instance
        .process(&[input.clone(), PluginRecord::with_value("plain text")])
        .expect("process");

    let expected = PluginRecord {
        value: Bytes::from_static(br#"{"password":"***","user":{"name":"ann","ssn":"***"}}"#),
        offset: None,
        partition: None,
        ..input
    };
    assert_eq!(
        outputs,
        vec![vec![expected], vec![PluginRecord::with_value("plain text")]]
    );
}

#[test]
fn init_fails_plugin_surfaces_guest_message() {
    let plugin = engine().load(&plugin_wasm("init_fails")).expect("load");
    let failed = plugin
        .try_instantiate("nope", &[], Box::new(MemState::new()))
        .expect_err("init must fail");
    assert_eq!(
        failed.error,
        PluginError::Init("init failed: this test plugin always refuses to start".to_string())
    );
}

#[test]
fn load_malformed_bytes_is_invalid() {
    for bytes in [&b""[..], b"hello, world", b"\0asm\x0d\0\x01\0garbage"] {
        let error = engine().load(bytes).expect_err("must not load");
        assert!(matches!(error, PluginError::Invalid(_)), "{error:?}");
    }
}

#[test]
fn load_core_module_is_invalid() {
    let module = wat::parse_str("(module (func (export \"filter\")))").expect("wat");
    for bytes in [&b"\0asm\x01\0\0\0"[..], &module] {
        let error = engine().load(bytes).expect_err("must not load");
        assert!(
            matches!(&error, PluginError::Invalid(m) if m.contains("core Wasm module")),
            "{error:?}"
        );
    }
}

#[test]
fn load_component_of_other_world_is_invalid() {
    for source in [common::OTHER_WORLD_WAT, common::WRONG_TYPES_WAT] {
        let component = wat::parse_str(source).expect("wat");
        let error = engine().load(&component).expect_err("must not load");
        assert!(
            matches!(&error, PluginError::Invalid(m) if m.contains("edgebus:plugin@0.2.0")),
            "{error:?}"
        );
    }
}

#[test]
fn load_same_bytes_has_stable_content_hash() {
    let wasm = plugin_wasm("tag_version");
    let first = engine().load(&wasm).expect("load");
    let second = engine().load(&wasm).expect("load");
    let other = engine().load(&plugin_wasm("trap_on")).expect("load");
    assert_eq!(first.hash(), second.hash());
    assert_ne!(first.hash(), other.hash());
    assert_eq!(first.hash().len(), 64);
    assert!(first.hash().bytes().all(|b| b.is_ascii_hexdigit()));
}

#[test]
fn load_with_warm_cache_dir_skips_compilation() {
    let wasm = plugin_wasm("csv_to_json");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = EngineConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..EngineConfig::default()
    };

    let cold_engine = Engine::new(config.clone()).expect("engine");
    let cold = cold_engine.load(&wasm).expect("cold load");
    assert_eq!(
        (cold_engine.cache_hits(), cold_engine.cache_misses()),
        (0, 1)
    );

    let warm_engine = Engine::new(config).expect("engine");
    let warm = warm_engine.load(&wasm).expect("warm load");
    assert_eq!(
        (warm_engine.cache_hits(), warm_engine.cache_misses()),
        (1, 0)
    );
    assert!(
        warm.load_time() * 5 < cold.load_time(),
        "cached load {:?} should be far faster than compiling {:?}",
        warm.load_time(),
        cold.load_time()
    );
    let mut instance = warm
        .instantiate(
            "csv",
            &params(&[("columns", "a,b")]),
            Box::new(MemState::new()),
        )
        .expect("instantiate");
    let outputs = instance.process(&records(&["1,2"])).expect("process");
    assert_eq!(values(&outputs[0]), vec![r#"{"a":"1","b":"2"}"#]);
}

#[test]
fn spin_infinite_loop_is_stopped_by_its_deadline() {
    let plugin = engine().load(&plugin_wasm("spin")).expect("load");
    let mut instance = plugin
        .instantiate("spin", &[], Box::new(MemState::new()))
        .expect("instantiate");

    let started = Instant::now();
    let error = instance
        .process(&records(&["x"]))
        .expect_err("spin never returns");
    let elapsed = started.elapsed();

    assert_eq!(error, PluginError::Deadline(Duration::from_millis(50)));
    // Stopped by the 50 ms deadline, not by chance; the bound is loose
    // because a loaded two-core box (CI) delays the interrupt by tens of ms.
    assert!(
        elapsed < Duration::from_secs(1),
        "stopped after {elapsed:?}"
    );
    assert!(instance.is_poisoned());
    assert!(matches!(
        instance.process(&records(&["y"])),
        Err(PluginError::Internal(_))
    ));
}

#[test]
fn trap_on_needle_traps_with_panic_message_and_poisons() {
    let plugin = engine().load(&plugin_wasm("trap_on")).expect("load");
    let mut instance = plugin
        .instantiate("trap", &[], Box::new(MemState::new()))
        .expect("instantiate");
    assert_eq!(
        instance.call(&records(&["fine"])),
        Ok(BatchOutput::Keep(vec![true]))
    );

    let error = instance
        .process(&records(&["fine", "a boom here"]))
        .expect_err("must trap");

    assert!(
        matches!(&error, PluginError::Trap(m) if m.contains("record value contains `boom`")),
        "{error:?}"
    );
    assert!(instance.is_poisoned());
}

#[test]
fn downsample_state_keeps_one_in_n_across_batches() {
    let plugin = engine().load(&plugin_wasm("downsample")).expect("load");
    let state = Arc::new(Mutex::new(MemState::new()));
    let mut instance = plugin
        .instantiate(
            "downsample",
            &params(&[("every", "3")]),
            Box::new(Arc::clone(&state)),
        )
        .expect("instantiate");

    let mut kept = Vec::new();
    for batch in [["1", "2"], ["3", "4"], ["5", "6"], ["7", "8"]] {
        let outputs = instance.process(&records(&batch)).expect("process");
        kept.extend(values(outputs.iter().flatten()));
    }

    assert_eq!(kept, vec!["1", "4", "7"]);
    assert!(!state.lock().expect("state lock").is_empty());

    let mut resumed = plugin
        .instantiate(
            "downsample",
            &params(&[("every", "3")]),
            instance.into_state(),
        )
        .expect("instantiate");
    let outputs = resumed.process(&records(&["9", "10"])).expect("process");
    assert_eq!(values(outputs.iter().flatten()), vec!["10"]);
}

#[test]
fn instantiate_beyond_pool_capacity_fails_without_panicking() {
    let engine = engine_with(EngineConfig {
        max_instances: 2,
        ..EngineConfig::default()
    });
    let plugin = engine.load(&plugin_wasm("tag_version")).expect("load");
    let first = plugin.instantiate("a", &[], Box::new(MemState::new()));
    let second = plugin.instantiate("b", &[], Box::new(MemState::new()));
    let third = plugin.instantiate("c", &[], Box::new(MemState::new()));
    assert!(first.is_ok() && second.is_ok());
    assert!(matches!(third, Err(PluginError::Internal(_))), "{third:?}");
    drop(first);
    assert!(
        plugin
            .instantiate("d", &[], Box::new(MemState::new()))
            .is_ok()
    );
}

/// The broker runs plugins on Tokio's blocking pool; `wasmtime-wasi`
/// bridges the guest's stdio through Tokio there (the panic message goes
/// to stderr on its way to the trap).
#[test]
fn trap_on_from_spawn_blocking_reports_trap_with_stderr() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let plugin = engine().load(&plugin_wasm("trap_on")).expect("load");
    let result = runtime.block_on(async move {
        tokio::task::spawn_blocking(move || {
            let mut instance = plugin.instantiate("trap", &[], Box::new(MemState::new()))?;
            instance.process(&records(&["boom"]))
        })
        .await
    });
    assert!(
        matches!(&result, Ok(Err(PluginError::Trap(m))) if m.contains("contains `boom`")),
        "{result:?}"
    );
}

/// Calling from an async task is a host bug (`wasmtime-wasi` blocks on
/// Tokio inside a runtime worker and panics); it must poison the instance,
/// not unwind into the broker.
#[test]
fn trap_on_from_async_task_fails_call_instead_of_panicking() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let plugin = engine().load(&plugin_wasm("trap_on")).expect("load");
    let mut instance = plugin
        .instantiate("trap", &[], Box::new(MemState::new()))
        .expect("instantiate");

    let result = runtime.block_on(async { instance.process(&records(&["boom"])) });

    assert!(
        matches!(&result, Err(PluginError::Trap(m)) if m.contains("host code panicked")),
        "{result:?}"
    );
    assert!(instance.is_poisoned());
}
