//! The plugins embedded in the binary: they match their sources, and
//! `plugin add --bundled`, `plugin list --bundled` and `demo` work where
//! there is no wasm toolchain.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as StdCommand};
use std::time::Duration;

use assert_cmd::Command;
use common::{BIN, free_port};
use edgebus::bundled::BUNDLED;
use serde_json::Value;

/// A PATH with the system's tools and no cargo or rustc, which live under
/// `~/.cargo/bin` or a toolchain directory, never in these.
const PATH_WITHOUT_CARGO: &str = "/usr/bin:/bin";

/// `edgebus ARGS` with [`PATH_WITHOUT_CARGO`] and a home of its own.
fn edgebus(home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", PATH_WITHOUT_CARGO)
        .env("HOME", home)
        .env("RUST_LOG", "warn")
        .timeout(Duration::from_secs(120));
    cmd
}

/// A broker process started without cargo on its PATH either, killed (by
/// its PID, through `Child`) when dropped.
struct Broker {
    addr: String,
    ca: PathBuf,
    child: Child,
    home: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        let home = tempfile::tempdir().unwrap();
        let data = home.path().join("data");
        let addr = format!("127.0.0.1:{}", free_port());
        let mut child = StdCommand::new(BIN)
            .args(["serve", "--data"])
            .arg(&data)
            .args(["--listen", &addr])
            .env_clear()
            .env("PATH", PATH_WITHOUT_CARGO)
            .env("HOME", home.path())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawning edgebus serve");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let first = lines.next().expect("broker printed a line").expect("utf-8");
        assert!(
            first.contains("listening"),
            "unexpected first line: {first}"
        );
        // Keep draining so the broker never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Broker {
            ca: data.join("tls").join("ca.pem"),
            addr,
            child,
            home,
        }
    }

    fn edgebus(&self, args: &[&str]) -> Command {
        let mut cmd = edgebus(self.home.path(), args);
        cmd.args(["--broker", &self.addr, "--ca"]).arg(&self.ca);
        cmd
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// The staleness check CI runs with the workspace's tests: `plugins/` built
/// now (with the pinned toolchain) must give the embedded bytes exactly.
#[test]
fn bundled_plugins_match_their_sources() {
    let built = edgebus::bundled::ensure_built().expect("plugins/ builds");
    let stale: Vec<&str> = BUNDLED
        .iter()
        .filter(|b| {
            let fresh = std::fs::read(built.join(format!("{}.wasm", b.file)))
                .unwrap_or_else(|e| panic!("{}: {e}", b.file));
            fresh != b.wasm
        })
        .map(|b| b.name)
        .collect();
    assert!(
        stale.is_empty(),
        "bundled plugins are stale ({}): run plugins/build.sh --bundle and commit \
         bus/server/bundled/",
        stale.join(", ")
    );
}

#[test]
fn plugin_add_bundled_works_without_a_wasm_toolchain() {
    let spawned = StdCommand::new("cargo")
        .arg("--version")
        .env_clear()
        .env("PATH", PATH_WITHOUT_CARGO)
        .output();
    assert!(spawned.is_err(), "cargo is on {PATH_WITHOUT_CARGO}");

    let b = Broker::start();
    let listed = json_lines(
        &edgebus(
            b.home.path(),
            &["plugin", "list", "--bundled", "--output", "json"],
        )
        .assert()
        .success()
        .get_output()
        .stdout,
    );
    let names: Vec<&str> = listed.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "csv-to-json",
            "dedupe",
            "downsample",
            "json-filter",
            "redact"
        ]
    );

    // Each one registers, and the broker agrees on its kind, size and hash.
    for listed in &listed {
        let name = listed["name"].as_str().unwrap();
        let added = json_lines(
            &b.edgebus(&["plugin", "add", "--bundled", name, "--output", "json"])
                .assert()
                .success()
                .get_output()
                .stdout,
        );
        assert_eq!(added.len(), 1, "{added:?}");
        for field in ["name", "kind", "size_bytes", "hash"] {
            assert_eq!(added[0][field], listed[field], "{name}: {field}");
        }
    }

    b.edgebus(&[
        "topic",
        "create",
        "sensors",
        "--partitions",
        "1",
        "--ingest",
        "json-filter:field=celsius,op=>=,value=-40",
    ])
    .assert()
    .success();
    b.edgebus(&["produce", "sensors"])
        .write_stdin("{\"celsius\":21.5}\n{\"celsius\":-999}\nnot json\n{\"celsius\":-3}\n")
        .assert()
        .success();
    let values: Vec<String> = json_lines(
        &b.edgebus(&["consume", "sensors", "--output", "json"])
            .assert()
            .success()
            .get_output()
            .stdout,
    )
    .iter()
    .map(|v| v["value"].as_str().unwrap().to_owned())
    .collect();
    assert_eq!(values, ["{\"celsius\":21.5}", "{\"celsius\":-3}"]);
}

#[test]
fn plugin_add_bundled_names_the_bundled_plugins_for_an_unknown_one() {
    let home = tempfile::tempdir().unwrap();
    // Refused before connecting: nothing listens on this port.
    let out = edgebus(
        home.path(),
        &[
            "plugin",
            "add",
            "--bundled",
            "json-filtre",
            "--broker",
            "127.0.0.1:1",
        ],
    )
    .assert()
    .code(4);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(
        stderr.contains("no bundled plugin \"json-filtre\""),
        "{stderr}"
    );
    for b in BUNDLED {
        assert!(stderr.contains(b.name), "{stderr}");
    }

    // A file and --bundled together are a usage error.
    edgebus(
        home.path(),
        &["plugin", "add", "--bundled", "json-filter", "f.wasm"],
    )
    .assert()
    .code(2);
}

/// Regression: `demo` built `plugins/` first, which takes minutes and
/// fails without the wasm32-wasip2 target; it now uses the embedded
/// plugins, says so, and ends with what to try next.
#[test]
fn demo_runs_on_the_embedded_plugins_without_a_wasm_toolchain() {
    let home = tempfile::tempdir().unwrap();
    let out = edgebus(home.path(), &["demo", "--sensors", "2", "--readings", "20"])
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(!stderr.contains("building"), "{stderr}");
    for name in ["json-filter", "redact", "downsample"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("▶ plugin {name} ")))
            .unwrap_or_else(|| panic!("{stdout}"));
        assert!(line.contains("embedded"), "{line}");
    }
    assert!(stdout.contains("dead-lettered="), "{stdout}");
    let next = stdout
        .split("try next")
        .nth(1)
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        next.contains("edgebus serve") && next.contains("edgebus plugin add --bundled"),
        "{next}"
    );
}
