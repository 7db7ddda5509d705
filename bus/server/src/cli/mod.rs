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

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edgebus_client::ClientError;

mod bench;
mod connect;
mod consume;
mod demo;
mod group;
mod pipeline;
mod plugin;
mod produce;
mod serve;
mod table;
mod topic;

pub use connect::ConnectArgs;

/// edgebus: a durable commit-log message bus for the edge, over QUIC.
#[derive(Debug, Parser)]
#[command(name = "edgebus", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// Measure throughput and latency.
    Bench(bench::BenchArgs),
    /// Run a broker in a temp dir with simulated sensors, ingest plugins, a
    /// pipeline and a read-path filter, and print what consumers see.
    Demo(demo::DemoArgs),
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
        Command::Bench(args) => bench::run(args).await,
        Command::Demo(args) => demo::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
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
        match self {
            Output::Text | Output::Json => println!("{value}"),
            Output::Yaml => match serde_yaml_ng::to_string(value) {
                Ok(doc) => print!("---\n{doc}"),
                Err(e) => eprintln!("error: cannot render YAML: {e}"),
            },
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
