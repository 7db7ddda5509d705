//! The plugins of this source tree (`plugins/`).
//!
//! The five general-purpose ones are embedded in the binary ([`BUNDLED`]),
//! so `edgebus plugin add --bundled` and `edgebus demo` need no wasm
//! toolchain. They are checked in under `bus/server/bundled/` rather than
//! built by `build.rs`: a build script that builds them only where the
//! `wasm32-wasip2` target is installed would make the binary's contents
//! depend on the build machine, and would add minutes to every clean
//! build. `plugins/build.sh --bundle` refreshes them; its builds are
//! reproducible, and the test `bundled_plugins_match_their_sources`
//! rebuilds them and fails while the checked-in bytes are stale.
//!
//! [`ensure_built`] builds the whole workspace on demand, for the tests'
//! own plugins (`plugins/test/`).

use std::path::PathBuf;
use std::sync::OnceLock;

/// A plugin embedded in the binary.
#[derive(Debug, Clone, Copy)]
pub struct Bundled {
    /// The name it is registered under (`json-filter`).
    pub name: &'static str,
    /// The artifact's file stem in `plugins/build.sh` output (`json_filter`).
    pub file: &'static str,
    /// The world it targets: `filter` or `transform`.
    pub kind: &'static str,
    /// One line on what it does (its crate's description).
    pub description: &'static str,
    /// The component.
    pub wasm: &'static [u8],
}

macro_rules! bundled {
    ($name:literal, $file:literal, $kind:literal, $description:literal) => {
        Bundled {
            name: $name,
            file: $file,
            kind: $kind,
            description: $description,
            wasm: include_bytes!(concat!("../bundled/", $file, ".wasm")),
        }
    };
}

/// The embedded plugins, by name.
pub const BUNDLED: &[Bundled] = &[
    bundled!(
        "csv-to-json",
        "csv_to_json",
        "transform",
        "turns CSV lines into JSON objects"
    ),
    bundled!(
        "dedupe",
        "dedupe",
        "filter",
        "drops records whose key or JSON field was seen within a time window"
    ),
    bundled!(
        "downsample",
        "downsample",
        "filter",
        "keeps one record in N, or one per time window, per key"
    ),
    bundled!(
        "json-filter",
        "json_filter",
        "filter",
        "keeps JSON records whose field compares true against a value"
    ),
    bundled!(
        "redact",
        "redact",
        "transform",
        "masks or removes JSON fields"
    ),
];

/// The embedded plugin called `name`.
pub fn find(name: &str) -> Option<&'static Bundled> {
    BUNDLED.iter().find(|b| b.name == name)
}

/// The embedded plugins' names, for messages: `csv-to-json, dedupe, …`.
pub fn names() -> String {
    BUNDLED
        .iter()
        .map(|b| b.name)
        .collect::<Vec<_>>()
        .join(", ")
}

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

/// The bytes of a plugin built from `plugins/` (`json_filter`, `spin`, …).
pub fn wasm(name: &str) -> Result<Vec<u8>, String> {
    let path = ensure_built()?.join(format!("{name}.wasm"));
    std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kind and description shown by `plugin list --bundled` are the
    /// crate's own ("Filter plugin: keeps …"), so they cannot drift apart.
    #[test]
    fn bundled_plugins_are_described_as_their_crates_are() {
        for b in BUNDLED {
            let manifest = source_dir().join(b.name).join("Cargo.toml");
            let text = std::fs::read_to_string(&manifest)
                .unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
            let manifest: toml::Table = toml::from_str(&text).unwrap();
            let package = manifest["package"].as_table().unwrap();
            assert_eq!(package["name"].as_str(), Some(b.name));
            assert_eq!(b.file, b.name.replace('-', "_"));
            let kind = if b.kind == "filter" {
                "Filter"
            } else {
                "Transform"
            };
            assert_eq!(
                package["description"].as_str(),
                Some(format!("{kind} plugin: {}", b.description).as_str()),
                "{}",
                b.name
            );
        }
        assert!(find("json-filter").is_some());
        assert!(find("spin").is_none());
    }
}
