//! The `edgebus` command line.
//!
//! Exit codes a script can rely on:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | any other failure (I/O, bad configuration) |
//! | 2 | bad usage (unknown flag, bad value) |
//! | 3 | cannot reach or authenticate the broker |
//! | 4 | the broker refused the request (unknown topic, topic exists, …) |
//! | 5 | `produce`: some records were not acknowledged |
//!
//! With `--output json` the error is one JSON object on stderr,
//! `{"error": "…", "code": N}`, and with `--output yaml` the same as a YAML
//! document. A reader that closes stdout early (`| head -1`) ends the
//! command quietly with 0, as it ends `cat`.

use std::process::ExitCode;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use edgebus_client::ClientError;

mod bench;
mod cluster;
mod completion;
mod connect;
mod consume;
mod demo;
mod format;
mod group;
mod mirror;
mod pipeline;
mod plugin;
mod produce;
mod profile;
mod serve;
mod stdout;
mod table;
mod tls;
mod topic;
mod version;

pub use connect::ConnectArgs;

/// edgebus: a durable commit-log message bus for the edge, over QUIC.
#[derive(Debug, Parser)]
#[command(name = "edgebus", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The `--output` of the chosen command, which decides how a failure
    /// is reported.
    #[arg(skip)]
    output: Output,
}

impl Cli {
    /// Parses the command line. A usage error ends the process with 2,
    /// reported in the `--output` format asked for.
    pub fn parse_or_exit() -> Cli {
        let matches = Cli::command()
            .try_get_matches()
            .unwrap_or_else(|e| usage_error(e));
        let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| usage_error(e));
        cli.output = output_of(&matches);
        cli
    }
}

/// The `--output` of the innermost subcommand that has one; text if none.
fn output_of(mut matches: &ArgMatches) -> Output {
    loop {
        if let Ok(Some(output)) = matches.try_get_one::<Output>("output") {
            return *output;
        }
        match matches.subcommand() {
            Some((_, sub)) => matches = sub,
            None => return Output::Text,
        }
    }
}

fn usage_error(e: clap::Error) -> ! {
    // Help and version go to stdout, and text-mode errors keep clap's own
    // rendering with its usage line.
    let output = output_in_raw_args();
    if !e.use_stderr() || output == Output::Text {
        e.exit();
    }
    let rendered = e.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    report(output, 2, first.strip_prefix("error: ").unwrap_or(first));
    std::process::exit(2);
}

/// `--output` as written on a command line clap refused, where no parsed
/// matches exist to ask. clap takes no value starting with `--` for another
/// flag, so an `--output` before any `--` is the flag itself.
fn output_in_raw_args() -> Output {
    let args: Vec<String> = std::env::args().skip(1).collect();
    args.iter()
        .take_while(|a| *a != "--")
        .enumerate()
        .find_map(|(i, a)| match a.strip_prefix("--output") {
            Some("") => args.get(i + 1).map(String::as_str),
            Some(v) => v.strip_prefix('='),
            None => None,
        })
        .and_then(|v| Output::from_str(v, false).ok())
        .unwrap_or_default()
}

/// Prints a failure on stderr in `output`'s format.
fn report(output: Output, code: u8, message: &str) {
    match output {
        Output::Text => eprintln!("error: {message}"),
        Output::Json | Output::Yaml => {
            match output.render(&serde_json::json!({"error": message, "code": code})) {
                Ok(text) => eprint!("{text}"),
                Err(_) => eprintln!("error: {message}"),
            }
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a broker.
    Serve(serve::ServeArgs),
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(topic::TopicCommand),
    /// Produce one record per stdin line.
    Produce(produce::ProduceArgs),
    /// Print records of a topic.
    Consume(consume::ConsumeArgs),
    /// List, describe, reset and delete consumer groups.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// Register, list, describe and remove WebAssembly plugins.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Create, list, describe and delete exactly-once pipelines.
    #[command(subcommand)]
    Pipeline(pipeline::PipelineCommand),
    /// Forward topics of this edge broker to a hub, offsets kept.
    #[command(subcommand)]
    Mirror(mirror::MirrorCommand),
    /// Measure throughput and latency.
    Bench(bench::BenchArgs),
    /// Run a broker in a temp dir with simulated sensors, ingest plugins, a
    /// pipeline and a read-path filter, and print what consumers see.
    Demo(demo::DemoArgs),
    /// Create, switch between, list and delete connection profiles.
    #[command(subcommand)]
    Profile(profile::ProfileCommand),
    /// Describe the cluster's nodes (one, until clustering exists).
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Make TLS material: a cluster CA.
    #[command(subcommand)]
    Tls(tls::TlsCommand),
    /// Print a shell completion script (bash, zsh, fish, …).
    Completion(completion::CompletionArgs),
    /// Print the version and git commit of this binary.
    Version(version::VersionArgs),
}

/// A command's failure, with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// A reader closed stdout early (`| head -1`): stop, and exit 0 with
    /// nothing on stderr, as `cat` does.
    fn stdout_closed() -> Self {
        Failure::new(0, "stdout closed")
    }

    /// Some produced records were not acknowledged.
    fn unacknowledged(message: impl Into<String>) -> Self {
        Failure::new(5, message)
    }

    fn other(e: impl std::fmt::Display) -> Self {
        Failure::new(1, e.to_string())
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Connection { .. } | ClientError::Config(_) => 3,
            ClientError::Broker { .. } => 4,
            _ => 1,
        };
        Failure::new(code, e.to_string())
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Topic(cmd) => topic::run(cmd).await,
        Command::Produce(args) => produce::run(args).await,
        Command::Consume(args) => consume::run(args).await,
        Command::Group(cmd) => group::run(cmd).await,
        Command::Plugin(cmd) => plugin::run(cmd).await,
        Command::Pipeline(cmd) => pipeline::run(cmd).await,
        Command::Mirror(cmd) => mirror::run(cmd).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Profile(cmd) => profile::run(cmd),
        Command::Cluster(cmd) => cluster::run(cmd).await,
        Command::Tls(cmd) => tls::run(cmd),
        Command::Completion(args) => completion::run(args),
        Command::Version(args) => version::run(args),
    };
    connect::close_connected().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) if f.code == 0 => ExitCode::SUCCESS,
        Err(f) => {
            report(cli.output, f.code, &f.message);
            ExitCode::from(f.code)
        }
    }
}

/// Connection flags plus `--output`, shared by the admin commands.
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

/// `--output` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Output {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
    /// One YAML document per object.
    Yaml,
}

impl Output {
    /// Prints one structured result in this format. Text output is each
    /// command's own concern, so `Text` falls back to JSON here only for
    /// callers that have no text rendering of their own.
    pub fn emit(self, value: &serde_json::Value) {
        match self.render(value) {
            Ok(text) => print!("{text}"),
            Err(f) => eprintln!("error: {}", f.message),
        }
    }

    /// One structured result in this format, ending in a newline: a JSON
    /// line, or a YAML document.
    fn render(self, value: &serde_json::Value) -> Result<String, Failure> {
        match self {
            Output::Text | Output::Json => Ok(format!("{value}\n")),
            Output::Yaml => serde_yaml_ng::to_string(value)
                .map(|doc| format!("---\n{doc}"))
                .map_err(|e| Failure::other(format!("cannot render YAML: {e}"))),
        }
    }
}

/// `--acks` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum AcksArg {
    /// Fire and forget.
    None,
    /// Committed, not yet fsync'd.
    Leader,
    /// fsync'd before the ack.
    #[default]
    Durable,
    /// fsync'd on every in-sync replica (on a single node, as durable).
    All,
}

impl From<AcksArg> for edgebus_client::Acks {
    fn from(a: AcksArg) -> Self {
        match a {
            AcksArg::None => edgebus_client::Acks::None,
            AcksArg::Leader => edgebus_client::Acks::Leader,
            AcksArg::Durable => edgebus_client::Acks::Durable,
            AcksArg::All => edgebus_client::Acks::All,
        }
    }
}

/// `--on-failure` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum PolicyArg {
    /// Count the failure and move on.
    Skip,
    /// Write the record to `<topic>.dlq` with headers naming the error.
    #[default]
    DeadLetter,
    /// Stop, retrying with backoff from 1 s to 30 s.
    Halt,
}

impl From<PolicyArg> for edgebus_client::FailurePolicy {
    fn from(p: PolicyArg) -> Self {
        match p {
            PolicyArg::Skip => edgebus_client::FailurePolicy::Skip,
            PolicyArg::DeadLetter => edgebus_client::FailurePolicy::DeadLetter,
            PolicyArg::Halt => edgebus_client::FailurePolicy::Halt,
        }
    }
}
