//! The `edgebus` binary: see [`cli`]. A client of the broker library (its
//! `serve` command starts one), so it alone uses the client SDK.

use std::process::ExitCode;

mod cli;

fn main() -> ExitCode {
    exit_quietly_when_stdout_closes();
    let cli = cli::Cli::parse_or_exit();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(cli::run(cli))
}

/// A reader that closes stdout early (`edgebus topic list | head -1`) must
/// end the command with 0 and nothing on stderr, as `cat` does, not with
/// `println!`'s panic and 101.
///
/// The robust fix is to treat the write error as a normal outcome, which
/// `consume` does through `cli::stdout` (so a group member still commits and
/// leaves). Every other `println!` is caught here: its panic is recognised
/// and the process exits 0 before the default hook prints anything.
/// Restoring the default SIGPIPE action instead was rejected: it needs
/// `unsafe` (denied in this workspace), the process dies by the signal
/// (status 141, not 0) without committing or leaving its group, and it
/// would also let a stray write kill a running broker.
fn exit_quietly_when_stdout_closes() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        // std words it "failed printing to stdout: Broken pipe (os error
        // 32)"; the process never calls setlocale, so strerror is English.
        if message.starts_with("failed printing to stdout: ") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}
