//! Operations and connection friction, through the real binary: what
//! `serve` says and writes at start, how clients fail to connect, profiles,
//! `cluster info`, `version`, completions, help examples, `bench` on a
//! user's broker and `demo`.
//!
//! Every command runs with `HOME`, `XDG_CONFIG_HOME` and `XDG_DATA_HOME` in
//! a temp dir and no `EDGEBUS_*` variables, so a developer's own profiles
//! and broker never leak in.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{BIN, free_port};

/// Long enough for a loaded CI box to start a broker and print its lines.
const START_MAX: Duration = Duration::from_secs(30);

/// A home of its own for a test: config, data and profiles live here.
struct Home(tempfile::TempDir);

impl Home {
    fn new() -> Home {
        Home(tempfile::tempdir().unwrap())
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// `edgebus ARGS` with this home and no `EDGEBUS_*` variables.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("HOME", self.path())
            .env("XDG_CONFIG_HOME", self.path().join("config"))
            .env("XDG_DATA_HOME", self.path().join("data-home"))
            .env("RUST_LOG", "warn");
        for var in [
            "EDGEBUS_BROKER",
            "EDGEBUS_CA",
            "EDGEBUS_DATA",
            "EDGEBUS_PROFILE",
            "EDGEBUS_CONNECT_TIMEOUT",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running edgebus")
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A broker process, killed (by PID) and reaped when dropped, with its
/// output lines arriving on channels.
struct Broker {
    child: Child,
    addr: String,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Broker {
    /// `edgebus serve --listen ADDR EXTRA…`, started without waiting.
    fn spawn(home: &Home, extra: &[&str], cwd: Option<&Path>) -> Broker {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = home.command(&["serve", "--listen", &addr]);
        cmd.args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn().expect("spawning edgebus serve");
        let stdout = lines(child.stdout.take().unwrap());
        let stderr = lines(child.stderr.take().unwrap());
        Broker {
            child,
            addr,
            stdout,
            stderr,
        }
    }

    /// A broker on `data`, once it printed its start lines (up to the one
    /// about clients, or the TLS line when there is none).
    fn start(home: &Home, data: &Path) -> Broker {
        let broker = Broker::spawn(home, &["--data", data.to_str().unwrap()], None);
        broker.wait_stdout(|l| l.contains("listening"));
        broker
    }

    fn wait_stdout(&self, want: impl Fn(&str) -> bool) -> Vec<String> {
        wait_line(&self.stdout, want)
    }

    fn wait_stderr(&self, want: impl Fn(&str) -> bool) -> Vec<String> {
        wait_line(&self.stderr, want)
    }
}

/// Lines up to and including the first that `want` accepts.
fn wait_line(rx: &mpsc::Receiver<String>, want: impl Fn(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + START_MAX;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let found = want(&line);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(_) => panic!("no wanted line within {START_MAX:?}; saw {seen:#?}"),
        }
    }
}

fn ca_of(data: &Path) -> PathBuf {
    data.join("tls").join("ca.pem")
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Regression: `tls/ca.key` and `tls/server.key` were created 0644, readable
/// by every local user, and nothing warned about key files left that way.
#[cfg(unix)]
#[test]
fn serve_creates_keys_owner_only_and_warns_about_exposed_ones() {
    use std::os::unix::fs::PermissionsExt;
    let home = Home::new();
    let data = home.path().join("d");
    let broker = Broker::start(&home, &data);
    let tls = data.join("tls");
    assert_eq!(mode(&tls), 0o700);
    assert_eq!(mode(&tls.join("ca.key")), 0o600);
    assert_eq!(mode(&tls.join("server.key")), 0o600);
    assert_eq!(mode(&data.join("stateless-reset.key")), 0o600);
    drop(broker);

    std::fs::set_permissions(
        tls.join("server.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let broker = Broker::spawn(&home, &["--data", data.to_str().unwrap()], None);
    let seen = broker.wait_stderr(|l| l.contains("server.key") && l.contains("chmod 600"));
    assert!(
        seen.iter().any(|l| l.contains("WARN")),
        "not a warning: {seen:#?}"
    );
}

/// Regression: with `--data` elsewhere than the default data dir, the
/// broker still said clients trust its CA "by default", and they failed.
/// Now it prints the exact flags and variables, and they work. Also: a
/// relative `--data` refused to start (the plugin cache wanted an absolute
/// path).
#[test]
fn serve_on_another_data_dir_prints_the_exact_ca_to_pass_and_it_works() {
    let home = Home::new();
    let broker = Broker::spawn(&home, &["--data", "rel-data"], Some(home.path()));
    let lines = broker.wait_stdout(|l| l.contains("EDGEBUS_CA="));
    let all = lines.join("\n");
    assert!(!all.contains("by default"), "{all}");
    let ca = ca_of(&home.path().join("rel-data"));
    let flags = format!("--broker {} --ca {}", broker.addr, ca.display());
    assert!(all.contains(&flags), "{all}");
    assert!(
        all.contains(&format!("EDGEBUS_CA={}", ca.display())),
        "{all}"
    );
    // The printed flags are enough.
    let out = home.run(&[
        "topic",
        "list",
        "--broker",
        &broker.addr,
        "--ca",
        ca.to_str().unwrap(),
    ]);
    ok(&out);
    let out = home
        .command(&["topic", "list"])
        .env("EDGEBUS_BROKER", &broker.addr)
        .env("EDGEBUS_CA", &ca)
        .output()
        .unwrap();
    ok(&out);
}

/// The other side: on the default data dir and the address clients dial by
/// default, the broker says no flags are needed, and none are.
#[test]
fn serve_on_the_default_data_dir_says_clients_need_no_flags() {
    let home = Home::new();
    let data = home.path().join("default-data");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = home
        .command(&["serve", "--listen", &addr])
        .env("EDGEBUS_DATA", &data)
        .env("EDGEBUS_BROKER", &addr)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = lines(child.stdout.take().unwrap());
    let seen = wait_line(&stdout, |l| l.contains("by default"));
    let _ = child.kill();
    let _ = child.wait();
    assert!(!seen.join("\n").contains("--ca"), "{seen:#?}");
}

/// Regression: a second `serve` on a data dir in use failed with redb's
/// "Database already open. Cannot acquire lock.", naming no file.
#[test]
fn second_serve_on_the_same_data_names_the_locked_file() {
    let home = Home::new();
    let data = home.path().join("d");
    let _first = Broker::start(&home, &data);
    let mut second = Broker::spawn(&home, &["--data", data.to_str().unwrap()], None);
    let status = common::wait_with_deadline(&mut second.child, START_MAX);
    assert!(!status.success());
    let seen = second.wait_stderr(|l| l.contains("error"));
    let error = seen.last().unwrap();
    assert!(
        error.contains(&data.join("edgebus.redb").display().to_string())
            && error.contains("locked"),
        "{error}"
    );
}

/// Regression: with no broker running a client waited 10 s and said only
/// `timed out`. Now it gives up after the 2 s default and says what to do.
#[test]
fn client_with_no_broker_running_says_so_within_the_connect_timeout() {
    let home = Home::new();
    let data = home.path().join("d");
    edgebus::tls::ensure_local_ca(&data).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let started = Instant::now();
    let out = home.run(&[
        "topic",
        "list",
        "--broker",
        &addr,
        "--ca",
        ca_of(&data).to_str().unwrap(),
    ]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("no broker answered at {addr}"))
            && stderr.contains("is `edgebus serve` running?"),
        "{stderr}"
    );
    // The old wait was 10 s; 2 s plus a slow process start stays well under.
    assert!(took < Duration::from_secs(8), "took {took:?}");

    let out = home.run(&[
        "topic",
        "list",
        "--broker",
        &addr,
        "--ca",
        ca_of(&data).to_str().unwrap(),
        "--connect-timeout",
        "300ms",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("within 300 ms"));
}

/// A CA that did not sign the broker's certificate: the error names the CA
/// file tried and how to pass another.
#[test]
fn client_with_the_wrong_ca_names_the_file_and_how_to_pass_another() {
    let home = Home::new();
    let broker = Broker::start(&home, &home.path().join("d"));
    let other = home.path().join("other");
    edgebus::tls::ensure_local_ca(&other).unwrap();
    let wrong = ca_of(&other);
    let out = home.run(&[
        "topic",
        "list",
        "--broker",
        &broker.addr,
        "--ca",
        wrong.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&wrong.display().to_string()), "{stderr}");
    assert!(
        stderr.contains("--ca PATH") && stderr.contains("EDGEBUS_CA=PATH"),
        "{stderr}"
    );
}

/// `--broker localhost:PORT` works (it was a `SocketAddr` flag), and
/// `cluster info` / `cluster status` describe the node as JSON shaped for
/// several nodes.
#[test]
fn broker_by_host_name_and_cluster_info_describe_the_node() {
    let home = Home::new();
    let data = home.path().join("d");
    let broker = Broker::start(&home, &data);
    let port = broker.addr.rsplit_once(':').unwrap().1;
    let by_name = format!("localhost:{port}");
    let ca = ca_of(&data);
    let ca = ca.to_str().unwrap();
    ok(&home.run(&["topic", "create", "t", "--broker", &by_name, "--ca", ca]));

    let out = ok(&home.run(&[
        "cluster", "info", "--broker", &by_name, "--ca", ca, "--output", "json",
    ]));
    let info: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let nodes = info["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1);
    let node = &nodes[0];
    assert_eq!(node["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(node["listeners"][0]["protocol"], "quic");
    assert_eq!(node["listeners"][0]["addr"], broker.addr.as_str());
    assert_eq!(node["data_dir"], data.display().to_string());
    assert!(node["data_bytes"].as_u64().unwrap() > 0, "{node}");
    assert!(node["uptime_ms"].as_u64().is_some(), "{node}");

    let text_out = ok(&home.run(&["cluster", "status", "--broker", &broker.addr, "--ca", ca]));
    assert!(
        text_out.contains(&format!("listener  quic {}", broker.addr)),
        "{text_out}"
    );
    assert!(text_out.contains(&data.display().to_string()), "{text_out}");
}

/// Profiles: create switches to the new one, commands use it when flags and
/// environment are silent, flag and environment beat it, use/list/delete.
#[test]
fn profiles_supply_connection_settings_below_flags_and_environment() {
    let home = Home::new();
    let data = home.path().join("d");
    let broker = Broker::start(&home, &data);
    let ca = ca_of(&data);
    let ca = ca.to_str().unwrap();
    let nowhere = format!("127.0.0.1:{}", free_port());
    ok(&home.run(&[
        "profile",
        "create",
        "good",
        "--broker",
        &broker.addr,
        "--ca",
        ca,
    ]));
    ok(&home.run(&[
        "profile", "create", "dead", "--broker", &nowhere, "--ca", ca,
    ]));
    assert!(home.path().join("config/edgebus/profiles.toml").exists());

    // `dead` is current now.
    let out = home.run(&["topic", "list", "--connect-timeout", "500ms"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&nowhere) && stderr.contains("\"dead\""),
        "{stderr}"
    );
    // Flag, then environment, beat the profile (its CA still applies).
    ok(&home.run(&["topic", "list", "--broker", &broker.addr]));
    ok(&home
        .command(&["topic", "list"])
        .env("EDGEBUS_BROKER", &broker.addr)
        .output()
        .unwrap());
    ok(&home.run(&["topic", "list", "--profile", "good"]));

    ok(&home.run(&["profile", "use", "good"]));
    ok(&home.run(&["topic", "create", "via-profile"]));
    let list = ok(&home.run(&["profile", "list", "--output", "json"]));
    let list: serde_json::Value = serde_json::from_str(list.trim()).unwrap();
    assert_eq!(list["current"], "good");
    assert_eq!(list["profiles"].as_array().unwrap().len(), 2);

    ok(&home.run(&["profile", "delete", "good"]));
    let list = ok(&home.run(&["profile", "list"]));
    assert!(list.contains("dead") && !list.contains("good"), "{list}");
    let out = home.run(&["profile", "use", "good"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no profile \"good\""));
    let out = home.run(&["profile", "create", "dead", "--broker", &broker.addr]);
    assert!(!out.status.success(), "a second `dead` was created");
}

/// The objects of a listing's JSON output: one array, or one object a line.
fn json_items(out: &str) -> Vec<serde_json::Value> {
    match serde_json::from_str(out.trim()) {
        Ok(serde_json::Value::Array(items)) => items,
        _ => out
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
    }
}

/// Names of the plugins a broker has, with their versions.
fn plugins(home: &Home, addr: &str, ca: &str) -> Vec<(String, u64)> {
    let out = ok(&home.run(&[
        "plugin", "list", "--output", "json", "--broker", addr, "--ca", ca,
    ]));
    json_items(&out)
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_owned(),
                v["version"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn topics(home: &Home, addr: &str, ca: &str) -> Vec<String> {
    let out = ok(&home.run(&[
        "topic", "list", "--output", "json", "--broker", addr, "--ca", ca,
    ]));
    json_items(&out)
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Regression: `bench --ingest json-filter:… --broker …` re-registered the
/// user's `json-filter` (a new version replaced theirs) and left its topic
/// behind; a bench that failed after creating its topic left it too.
#[test]
fn bench_on_a_users_broker_leaves_its_plugins_and_topics_as_they_were() {
    let home = Home::new();
    let data = home.path().join("d");
    let broker = Broker::start(&home, &data);
    let ca = ca_of(&data);
    let ca = ca.to_str().unwrap();
    let built = edgebus::bundled::ensure_built().expect("bundled plugins");
    let wasm = built.join("json_filter.wasm");
    ok(&home.run(&[
        "plugin",
        "add",
        "json-filter",
        wasm.to_str().unwrap(),
        "--broker",
        &broker.addr,
        "--ca",
        ca,
    ]));
    ok(&home.run(&[
        "topic",
        "create",
        "mine",
        "--broker",
        &broker.addr,
        "--ca",
        ca,
    ]));
    let before = (
        plugins(&home, &broker.addr, ca),
        topics(&home, &broker.addr, ca),
    );

    let bench = |ingest: &str| {
        home.run(&[
            "bench",
            "produce",
            "--records",
            "300",
            "--size",
            "100",
            "--json",
            "--ingest",
            ingest,
            "--broker",
            &broker.addr,
            "--ca",
            ca,
            "--output",
            "json",
        ])
    };
    ok(&bench("json-filter:field=n,op=>=,value=0"));
    assert_eq!(
        before,
        (
            plugins(&home, &broker.addr, ca),
            topics(&home, &broker.addr, ca)
        )
    );

    // The plugin's init refuses an unknown operator: the bench fails after
    // creating its topic and registering its plugin, and removes both.
    let out = bench("json-filter:field=n,op=nope,value=0");
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert_eq!(
        before,
        (
            plugins(&home, &broker.addr, ca),
            topics(&home, &broker.addr, ca)
        )
    );
}

#[test]
fn version_prints_the_package_version() {
    let home = Home::new();
    let out = ok(&home.run(&["version"]));
    assert!(
        out.starts_with(&format!("edgebus {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    let json: serde_json::Value =
        serde_json::from_str(ok(&home.run(&["version", "--output", "json"])).trim()).unwrap();
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn completion_scripts_cover_every_command() {
    let home = Home::new();
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(&home.run(&["completion", shell]));
        for command in ["serve", "profile", "cluster", "consume", "completion"] {
            assert!(script.contains(command), "{shell} script lacks {command}");
        }
    }
    let out = home.run(&["completion", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn help_of_operations_commands_shows_examples() {
    let home = Home::new();
    for command in ["serve", "bench", "demo", "profile", "cluster", "completion"] {
        let help = ok(&home.run(&[command, "--help"]));
        let examples = help
            .split("Examples:")
            .nth(1)
            .unwrap_or_else(|| panic!("`{command} --help` has no examples:\n{help}"));
        assert!(
            examples.contains(&format!("edgebus {command}")),
            "{command}: {examples}"
        );
    }
}

/// The binary packs its relative relocations where its glibc can load
/// that (`build.rs`, which sets `EDGEBUS_PACKED_RELOCS`): without them the
/// dynamic loader reads 1.3 MB of `.rela.dyn` at every start, which stays
/// resident: about 1.2 MiB of an idle broker's 16 MiB. This fails where
/// the linker ignored the flag.
#[test]
fn the_binary_packs_its_relative_relocations_where_its_libc_allows() {
    if option_env!("EDGEBUS_PACKED_RELOCS").is_none() {
        eprintln!("skipped: the C library linked against predates packed relocations");
        return;
    }
    let out = Command::new("readelf")
        .args(["--dynamic", BIN])
        .output()
        .expect("readelf (binutils, which the C toolchain brings)");
    assert!(out.status.success(), "readelf: {}", text(&out.stderr));
    let dynamic = text(&out.stdout);
    assert!(dynamic.contains("(RELR)"), "no DT_RELR entry:\n{dynamic}");
}
