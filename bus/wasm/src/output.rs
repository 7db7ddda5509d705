//! Where guest output goes: the `log` import and WASI stdout/stderr, both
//! turned into `tracing` events tagged with the plugin's name and
//! rate-limited per instance.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::budget::{self, SharedLogBudget};
use crate::world::Level;

/// Longest line kept whole; longer output is cut into lines this long, so a
/// guest that never writes a newline cannot grow the host's buffer, and a
/// longer `log` message is cut to it.
const LINE_BYTES_MAX: usize = 1024;
/// How much of the latest stderr output is kept to explain a trap.
const STDERR_TAIL_BYTES_MAX: usize = 512;

/// Which standard stream a guest wrote to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stdio {
    Stdout,
    Stderr,
}

/// Per-instance sink for everything a guest prints or logs, rate-limited
/// by a budget shared with every other instance of the same chain.
pub(crate) struct GuestOutput {
    name: Arc<str>,
    budget: SharedLogBudget,
    stdout_line: Vec<u8>,
    stderr_line: Vec<u8>,
    stderr_tail: Vec<u8>,
}

impl GuestOutput {
    pub(crate) fn new(name: Arc<str>, budget: SharedLogBudget) -> GuestOutput {
        GuestOutput {
            name,
            budget,
            stdout_line: Vec::new(),
            stderr_line: Vec::new(),
            stderr_tail: Vec::new(),
        }
    }

    /// One line from the `log` import.
    pub(crate) fn log(&mut self, level: Level, message: &str) {
        let message = truncate(message, LINE_BYTES_MAX);
        let Some(suppressed) = self.admit(message.len()) else {
            return;
        };
        let plugin = &*self.name;
        report_suppressed(plugin, suppressed);
        match level {
            Level::Trace => tracing::trace!(target: "edgebus::plugin", plugin, "{message}"),
            Level::Debug => tracing::debug!(target: "edgebus::plugin", plugin, "{message}"),
            Level::Info => tracing::info!(target: "edgebus::plugin", plugin, "{message}"),
            Level::Warn => tracing::warn!(target: "edgebus::plugin", plugin, "{message}"),
            Level::Error => tracing::error!(target: "edgebus::plugin", plugin, "{message}"),
        }
    }

    fn write(&mut self, stream: Stdio, mut bytes: &[u8]) {
        if stream == Stdio::Stderr {
            self.stderr_tail.extend_from_slice(bytes);
            let excess = self.stderr_tail.len().saturating_sub(STDERR_TAIL_BYTES_MAX);
            self.stderr_tail.drain(..excess);
        }
        while !bytes.is_empty() {
            let line = match stream {
                Stdio::Stdout => &mut self.stdout_line,
                Stdio::Stderr => &mut self.stderr_line,
            };
            let room = LINE_BYTES_MAX - line.len();
            let chunk_len = match bytes.iter().position(|&b| b == b'\n') {
                Some(newline) if newline < room => newline + 1,
                _ => room.min(bytes.len()),
            };
            let (chunk, rest) = bytes.split_at(chunk_len);
            line.extend_from_slice(chunk);
            bytes = rest;
            if line.last() == Some(&b'\n') || line.len() == LINE_BYTES_MAX {
                let line = std::mem::take(line);
                self.emit_line(stream, &line);
            }
        }
    }

    /// Emits lines still waiting for their newline; called after each call
    /// so output is not held back across batches.
    pub(crate) fn flush(&mut self) {
        for stream in [Stdio::Stdout, Stdio::Stderr] {
            let line = match stream {
                Stdio::Stdout => std::mem::take(&mut self.stdout_line),
                Stdio::Stderr => std::mem::take(&mut self.stderr_line),
            };
            if !line.is_empty() {
                self.emit_line(stream, &line);
            }
        }
    }

    /// A line the host writes about this instance (that a failure
    /// poisoned it), charged to the same budget as the guest's lines: a
    /// plugin that fails on every call would otherwise flood the log
    /// through the host.
    pub(crate) fn host_warning(&mut self, message: &str) {
        host_warning(&self.budget, &self.name, message);
    }

    fn admit(&self, bytes: usize) -> Option<u64> {
        budget::log_budget(&self.budget).admit(bytes)
    }

    fn emit_line(&mut self, stream: Stdio, line: &[u8]) {
        let Some(suppressed) = self.admit(line.len()) else {
            return;
        };
        let plugin = &*self.name;
        report_suppressed(plugin, suppressed);
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\n', '\r']);
        match stream {
            Stdio::Stdout => {
                tracing::info!(target: "edgebus::plugin", plugin, stream = "stdout", "{text}")
            }
            Stdio::Stderr => {
                tracing::warn!(target: "edgebus::plugin", plugin, stream = "stderr", "{text}")
            }
        }
    }

    /// Forgets stderr written before the call that is about to start.
    pub(crate) fn clear_stderr_tail(&mut self) {
        self.stderr_tail.clear();
    }

    /// The end of what the guest wrote to stderr since the call started,
    /// on one line: Rust guests print their panic message there just
    /// before they trap.
    pub(crate) fn stderr_tail(&self) -> Option<String> {
        let text = String::from_utf8_lossy(&self.stderr_tail);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with("note: run with `RUST_BACKTRACE"))
            .collect();
        (!lines.is_empty()).then(|| lines.join(" | "))
    }
}

/// A warning the host writes about plugin `plugin`, charged to its chain's
/// log budget.
pub(crate) fn host_warning(budget: &SharedLogBudget, plugin: &str, message: &str) {
    let Some(suppressed) = budget::log_budget(budget).admit(message.len()) else {
        return;
    };
    report_suppressed(plugin, suppressed);
    tracing::warn!(target: "edgebus::plugin", plugin, "{message}");
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn report_suppressed(plugin: &str, suppressed: u64) {
    if suppressed > 0 {
        tracing::warn!(
            target: "edgebus::plugin",
            plugin,
            suppressed,
            "plugin output over its rate limit was dropped"
        );
    }
}

/// Locks the shared output; a panic while it was held cannot leave it in a
/// state worse than a lost line, so poisoning is ignored.
pub(crate) fn lock(output: &Mutex<GuestOutput>) -> std::sync::MutexGuard<'_, GuestOutput> {
    output.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A guest's stdout or stderr, as handed to `wasmtime-wasi`.
///
/// Writes are handled synchronously on the calling thread: the default
/// adapter would spawn a task on `wasmtime-wasi`'s Tokio runtime for each
/// stream, which a sandbox that only logs does not need.
#[derive(Clone)]
pub(crate) struct GuestStdio {
    stream: Stdio,
    output: Arc<Mutex<GuestOutput>>,
}

impl GuestStdio {
    pub(crate) fn stdout(output: Arc<Mutex<GuestOutput>>) -> GuestStdio {
        GuestStdio {
            stream: Stdio::Stdout,
            output,
        }
    }

    pub(crate) fn stderr(output: Arc<Mutex<GuestOutput>>) -> GuestStdio {
        GuestStdio {
            stream: Stdio::Stderr,
            output,
        }
    }
}

impl IsTerminal for GuestStdio {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStdio {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    /// Only WASIp3 guests use this form, and the broker links WASIp2 only;
    /// should one reach it, its output is discarded rather than trusted to
    /// an unbounded async writer.
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(tokio::io::sink())
    }
}

/// How many bytes a guest may hand over in one write; any size works, as
/// output is consumed immediately.
const WRITE_PERMIT_BYTES: usize = 64 * 1024;

impl OutputStream for GuestStdio {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        lock(&self.output).write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT_BYTES)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestStdio {
    async fn ready(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output() -> GuestOutput {
        GuestOutput::new(
            Arc::from("p"),
            budget::LogBudget::shared(&crate::Budgets::default()),
        )
    }

    #[test]
    fn log_long_message_is_cut_and_charged_as_cut() {
        let shared = budget::LogBudget::shared(&crate::Budgets {
            // A burst of 1,100 bytes: room for one cut line, not two.
            log_bytes_per_second: 220,
            ..crate::Budgets::default()
        });
        let mut output = GuestOutput::new(Arc::from("p"), shared.clone());
        output.log(Level::Info, &"é".repeat(LINE_BYTES_MAX));
        output.log(Level::Info, &"x".repeat(100));
        let budget = budget::log_budget(&shared);
        assert_eq!((budget.written_total, budget.dropped_total), (1, 1));
    }

    #[test]
    fn truncate_cuts_at_char_boundary() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("hello", 10), "hello");
    }

    #[test]
    fn stderr_tail_panic_output_joined_without_backtrace_note() {
        let mut output = output();
        output.write(
            Stdio::Stderr,
            b"thread '<unnamed>' panicked at src/lib.rs:9:5:\nboom\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n",
        );
        assert_eq!(
            output.stderr_tail().as_deref(),
            Some("thread '<unnamed>' panicked at src/lib.rs:9:5: | boom")
        );
        output.clear_stderr_tail();
        assert_eq!(output.stderr_tail(), None);
    }

    #[test]
    fn write_line_longer_than_max_is_split_not_buffered() {
        let mut output = output();
        output.write(Stdio::Stdout, &vec![b'x'; LINE_BYTES_MAX * 3 + 10]);
        assert_eq!(output.stdout_line.len(), 10);
        output.flush();
        assert!(output.stdout_line.is_empty());
    }
}
