//! The per-instance memory cap. In a test binary of its own, so that no
//! other test allocates while host RSS is measured.

mod common;

use common::{engine_with, plugin_wasm, records};
use edgebus_wasm::{EngineConfig, MemState, PluginError};

const MEMORY_MAX_BYTES: usize = 32 * 1024 * 1024;

/// Resident set size of this process, from `/proc/self/status`.
fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kib: usize = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line");
    kib * 1024
}

#[test]
fn memory_hog_fails_with_memory_limit_and_host_rss_stays_bounded() {
    // The cap is what is tested, not the deadline: on a loaded machine
    // growing 32 MiB can take longer than the default 50 ms, and the
    // deadline would fire first.
    let engine = engine_with(EngineConfig {
        memory_max_bytes: MEMORY_MAX_BYTES,
        deadline: std::time::Duration::from_secs(10),
        ..EngineConfig::default()
    });
    let plugin = engine.load(&plugin_wasm("memory_hog")).expect("load");
    let fail_once = || {
        let mut instance = plugin
            .instantiate("hog", &[], Box::new(MemState::new()))
            .expect("instantiate");
        let error = instance
            .process(&records(&["x"]))
            .expect_err("must hit the cap");
        assert_eq!(error, PluginError::MemoryLimit(MEMORY_MAX_BYTES));
        assert!(instance.is_poisoned());
    };
    // Warm up: the first failures map the pool slot and fill allocator
    // caches; what matters is that later failures add nothing.
    fail_once();
    fail_once();
    let before = rss_bytes();

    for _ in 0..20 {
        fail_once();
    }

    let grown = rss_bytes().saturating_sub(before);
    eprintln!("host RSS {before} bytes before, grew by {grown} bytes over 20 failures");
    assert!(
        grown < 4 * 1024 * 1024,
        "host RSS grew by {grown} bytes over 20 failures (cap {MEMORY_MAX_BYTES} per instance)"
    );
}
