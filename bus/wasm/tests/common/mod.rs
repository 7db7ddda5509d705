//! Shared by the integration tests: builds the test plugins once and hands
//! out their bytes, a shared engine and record helpers.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use edgebus_wasm::{Engine, EngineConfig, PluginRecord};

/// Where `plugins/build.sh` leaves the components.
pub fn plugin_dir() -> PathBuf {
    workspace_root().join("plugins/target/wasm32-wasip2/release")
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The bytes of test plugin `name` (e.g. `"json_filter"`), building every
/// plugin first if this process has not yet done so.
pub fn plugin_wasm(name: &str) -> Vec<u8> {
    build_plugins_once();
    let path = plugin_dir().join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "test plugin {} missing after plugins/build.sh: {e}",
            path.display()
        )
    })
}

/// Runs `plugins/build.sh` once per test process. Test threads wait on
/// the `OnceLock`; concurrent test processes wait on a file lock, so two
/// cargo builds never race in `plugins/target`.
fn build_plugins_once() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(message) = BUILT.get_or_init(build_plugins) {
        panic!("{message}");
    }
}

fn build_plugins() -> Result<(), String> {
    require_wasip2_target()?;
    let root = workspace_root();
    let script = root.join("plugins/build.sh");
    if !script.exists() {
        return Err(format!("{} does not exist", script.display()));
    }
    let lock_path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("edgebus-wasm-plugins.lock");
    let lock = File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
    let output = Command::new("bash")
        .arg(&script)
        .current_dir(root.join("plugins"))
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !output.status.success() {
        return Err(format!(
            "plugins/build.sh failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

fn require_wasip2_target() -> Result<(), String> {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .current_dir(workspace_root().join("plugins"))
        .output()
        .map_err(|e| format!("running rustc: {e}"))?;
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    if Path::new(&sysroot)
        .join("lib/rustlib/wasm32-wasip2")
        .is_dir()
    {
        Ok(())
    } else {
        Err(format!(
            "the wasm32-wasip2 target is not installed in {sysroot}: \
             run `rustup target add wasm32-wasip2` to build the test plugins"
        ))
    }
}

/// Compiled plugins are cached here across test binaries and runs, so a
/// plugin is compiled once (Cranelift in a debug build takes seconds).
pub fn shared_cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("edgebus-wasm-cache")
}

/// An engine with default limits and the shared compile cache.
pub fn engine() -> Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE
        .get_or_init(|| engine_with(EngineConfig::default()))
        .clone()
}

/// An engine with `config`, using the shared compile cache unless `config`
/// names its own.
pub fn engine_with(mut config: EngineConfig) -> Engine {
    if config.cache_dir.is_none() {
        config.cache_dir = Some(shared_cache_dir());
    }
    Engine::new(config).expect("engine")
}

/// `key=value` parameters.
pub fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Records with these values.
pub fn records(values: &[&str]) -> Vec<PluginRecord> {
    values
        .iter()
        .map(|value| PluginRecord::with_value(value.as_bytes().to_vec()))
        .collect()
}

/// The values of `records`, as strings.
pub fn values<'a>(records: impl IntoIterator<Item = &'a PluginRecord>) -> Vec<String> {
    records
        .into_iter()
        .map(|record| String::from_utf8_lossy(&record.value).into_owned())
        .collect()
}

/// A hand-written filter component whose `filter` always returns
/// `err("wat rejected!")`, for the rejection path: none of the bundled
/// plugins rejects a batch. A bump allocator serves the host's argument
/// copies and is reset after every call.
pub const REJECTING_FILTER_WAT: &str = r#"
(component
  (core module $m
    (memory (export "memory") 1)
    (global $heap (mut i32) (i32.const 1024))
    (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p
        (i32.and
          (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
          (i32.xor (i32.sub (local.get 2) (i32.const 1)) (i32.const -1))))
      (global.set $heap (i32.add (local.get $p) (local.get 3)))
      (local.get $p))
    (func (export "reset") (param i32)
      (global.set $heap (i32.const 1024)))
    (data (i32.const 16) "\01\00\00\00\20\00\00\00\0d\00\00\00")
    (data (i32.const 32) "wat rejected!")
    (func (export "init") (param i32 i32) (result i32) (i32.const 64))
    (func (export "filter") (param i32 i32) (result i32) (i32.const 16))
  )
  (core instance $i (instantiate $m))
  (type $header' (record (field "key" string) (field "value" (list u8))))
  (export $header "header" (type $header'))
  (type $record' (record
    (field "key" (option (list u8)))
    (field "value" (list u8))
    (field "headers" (list $header))
    (field "timestamp-ms" s64)
    (field "offset" (option u64))
    (field "partition" (option u32))))
  (export $record "record" (type $record'))
  (type $param' (record (field "key" string) (field "value" string)))
  (export $param "param" (type $param'))
  (func (export "init") (param "params" (list $param)) (result (result (error string)))
    (canon lift (core func $i "init") (memory (core memory $i "memory"))
      (realloc (core func $i "cabi_realloc")) (post-return (core func $i "reset"))))
  (func (export "filter") (param "batch" (list $record)) (result (result (list bool) (error string)))
    (canon lift (core func $i "filter") (memory (core memory $i "memory"))
      (realloc (core func $i "cabi_realloc")) (post-return (core func $i "reset"))))
)
"#;

/// A component that exports `init` and `filter`, but with the wrong types
/// (no parameters, no results).
pub const WRONG_TYPES_WAT: &str = r#"
(component
  (core module $m
    (func (export "init"))
    (func (export "filter")))
  (core instance $i (instantiate $m))
  (func (export "init") (canon lift (core func $i "init")))
  (func (export "filter") (canon lift (core func $i "filter")))
)
"#;

/// A component for some other world: it exports only `run`.
pub const OTHER_WORLD_WAT: &str = r#"
(component
  (core module $m (func (export "run")))
  (core instance $i (instantiate $m))
  (func (export "run") (canon lift (core func $i "run")))
)
"#;
