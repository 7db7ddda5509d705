//! Records the git commit the binary is built from, for `edgebus version`
//! and `cluster info`, when git and a repository are at hand; a build from
//! a source archive simply has none (`EDGEBUS_GIT_COMMIT` is empty).

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Rebuilds when HEAD moves: the files that name the commit. Only existing
/// files are named, since cargo reruns a build script on every build when a
/// named file is missing.
fn watch(git_dir: Option<String>, common_dir: Option<String>) {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let abs = |p: String| -> PathBuf { manifest.join(p) };
    let mut files = Vec::new();
    if let Some(dir) = git_dir.map(abs) {
        files.push(dir.join("HEAD"));
    }
    if let Some(dir) = common_dir.map(abs) {
        files.push(dir.join("packed-refs"));
        if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
            files.push(dir.join(head_ref));
        }
    }
    for file in files.into_iter().filter(|f| f.exists()) {
        println!("cargo:rerun-if-changed={}", file.display());
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_default();
    watch(
        git(&["rev-parse", "--git-dir"]),
        git(&["rev-parse", "--git-common-dir"]),
    );
    println!("cargo:rustc-env=EDGEBUS_GIT_COMMIT={commit}");
    // Relative relocations packed (DT_RELR): the dynamic loader reads a few
    // KB at start instead of this position-independent binary's 1.3 MB
    // `.rela.dyn`, which then stays resident. Idle RSS is a gateway figure.
    // Only where the C library linked against can load such a binary.
    if libc_loads_packed_relocations() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
        println!("cargo:rustc-env=EDGEBUS_PACKED_RELOCS=1");
    }
}

/// Whether the target is glibc Linux and the glibc the linker finds
/// defines `GLIBC_ABI_DT_RELR` (2.36 and later), the version a binary with
/// packed relocations requires: with an older one it would not start.
fn libc_loads_packed_relocations() -> bool {
    let target = |key: &str| std::env::var(key).unwrap_or_default();
    if target("CARGO_CFG_TARGET_OS") != "linux" || target("CARGO_CFG_TARGET_ENV") != "gnu" {
        return false;
    }
    // The linker cargo resolved for the target (a cross compiler's driver),
    // else rustc's default driver.
    let linker = std::env::var("RUSTC_LINKER").unwrap_or_else(|_| "cc".to_owned());
    let Ok(out) = Command::new(linker)
        .arg("-print-file-name=libc.so.6")
        .output()
    else {
        return false;
    };
    // The driver prints the bare name back when it has no such file.
    let libc = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    const VERSION: &[u8] = b"GLIBC_ABI_DT_RELR";
    libc.is_absolute()
        && std::fs::read(&libc)
            .is_ok_and(|bytes| bytes.windows(VERSION.len()).any(|w| w == VERSION))
}
