//! The plugins bundled in this source tree (`plugins/`), built on demand
//! for `wasm32-wasip2`. Used by `edgebus demo` and by the tests.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The `plugins/` workspace of this source tree.
pub fn source_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../plugins")
}

/// Where `plugins/build.sh` leaves the components.
pub fn artifact_dir() -> PathBuf {
    source_dir().join("target/wasm32-wasip2/release")
}

/// Builds `plugins/` once per process (a no-op for cargo when nothing
/// changed). Processes building at once are serialised with a file lock.
pub fn ensure_built() -> Result<PathBuf, String> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT.get_or_init(build).clone()?;
    Ok(artifact_dir())
}

fn build() -> Result<(), String> {
    let root = source_dir();
    let target = root.join("target");
    std::fs::create_dir_all(&target).map_err(|e| format!("{}: {e}", target.display()))?;
    let lock = std::fs::File::create(target.join(".build-lock"))
        .map_err(|e| format!("build lock: {e}"))?;
    lock.lock().map_err(|e| format!("build lock: {e}"))?;
    let out = std::process::Command::new("bash")
        .arg(root.join("build.sh"))
        .output()
        .map_err(|e| format!("running plugins/build.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "plugins/build.sh failed (is the wasm32-wasip2 target installed? \
             `rustup target add wasm32-wasip2`):\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// The bytes of a built plugin (`json_filter`, `spin`, …).
pub fn wasm(name: &str) -> Result<Vec<u8>, String> {
    let path = ensure_built()?.join(format!("{name}.wasm"));
    std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
}
