//! Helpers for tests that run `edgebus` as separate processes.
// Each test binary includes this module and uses a subset of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The `edgebus` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_edgebus");

/// A UDP port free right now on 127.0.0.1 (see [`low_free_port`]).
pub fn free_port() -> u16 {
    low_free_port(|port| UdpSocket::bind(("127.0.0.1", port)).is_ok())
}

/// A TCP port free right now on 127.0.0.1 (see [`low_free_port`]).
pub fn free_tcp_port() -> u16 {
    low_free_port(|port| TcpListener::bind(("127.0.0.1", port)).is_ok())
}

/// A port that `free` finds free, picked below the kernel's ephemeral range
/// (32768 and up by default): a port the kernel hands out for binding to
/// port 0 can be taken by any client's outgoing connection (another test's)
/// between this pick and the broker's bind, which then fails with "Address
/// already in use". Picks are spread by process and time so parallel tests
/// rarely try the same port, and a taken one is skipped.
fn low_free_port(free: impl Fn(u16) -> bool) -> u16 {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const PORTS: u32 = 12_000;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let start = std::process::id()
        .wrapping_mul(7_919)
        .wrapping_add(nanos)
        .wrapping_add(CALLS.fetch_add(1, Ordering::Relaxed).wrapping_mul(104_729));
    (0..PORTS)
        .map(|i| (FIRST + start.wrapping_add(i) % PORTS) as u16)
        .find(|&port| free(port))
        .expect("a free port below the ephemeral range")
}

/// Starts `edgebus serve` and waits for its "listening" line.
pub fn spawn_broker(data: &Path, addr: &str) -> Child {
    spawn_broker_with(data, addr, &[])
}

/// Starts `edgebus serve` with more flags and waits for its "listening"
/// line.
pub fn spawn_broker_with(data: &Path, addr: &str, extra: &[String]) -> Child {
    let mut child = Command::new(BIN)
        .args(["serve", "--data"])
        .arg(data)
        .args(["--listen", addr])
        .args(extra)
        // Plugins that trap on purpose warn on every record they fail on.
        .env("RUST_LOG", "warn,edgebus::plugin=error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning edgebus serve");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let first = lines.next().expect("broker printed a line").expect("utf-8");
    assert!(
        first.contains("listening"),
        "unexpected first line: {first}"
    );
    // Keep draining so the broker never blocks on a full pipe.
    thread::spawn(move || for _ in lines {});
    child
}

/// Waits for a child, killing it if it overruns `limit`.
pub fn wait_with_deadline(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not finish within {limit:?}", child.id());
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs an `edgebus` client command against `addr`.
pub fn cli(args: &[&str], addr: &str, ca: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .args(["--broker", addr, "--ca"])
        .arg(ca)
        .output()
        .expect("running edgebus")
}

/// A broker process in a temp dir, and how to reach it; SIGKILLed (by its
/// PID, through `Child`) and reaped when dropped, however a test ends.
pub struct Broker {
    process: Option<Child>,
    /// Its data dir.
    pub data: std::path::PathBuf,
    /// Its QUIC address.
    pub addr: String,
    /// The CA its clients trust.
    pub ca: std::path::PathBuf,
    /// Further `serve` flags, kept for restarts.
    extra: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Starts a broker on a fresh data dir and a free port.
    pub fn start() -> Broker {
        Broker::start_with::<&str>(&[])
    }

    /// Starts a broker on a fresh data dir and a free port, with more
    /// `serve` flags.
    pub fn start_with<S: AsRef<str>>(extra: &[S]) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let addr = format!("127.0.0.1:{}", free_port());
        let extra: Vec<String> = extra.iter().map(|s| s.as_ref().to_owned()).collect();
        let process = Some(spawn_broker_with(&data, &addr, &extra));
        Broker {
            process,
            ca: data.join("tls").join("ca.pem"),
            data,
            addr,
            extra,
            _dir: dir,
        }
    }

    /// SIGKILLs the broker and starts it again on the same data dir.
    pub fn restart(&mut self) {
        self.kill();
        self.process = Some(spawn_broker_with(&self.data, &self.addr, &self.extra));
    }

    /// An `edgebus` client command with this broker's flags, not yet
    /// spawned.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .args(["--broker", &self.addr, "--ca"])
            .arg(&self.ca);
        c
    }

    /// Runs a client command to its end.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        cli(args, &self.addr, &self.ca)
    }

    /// Runs a client command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed ({:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tmpfs mounted at a temp dir, unmounted when dropped.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Whether the tests run as root (mounting needs it).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}
