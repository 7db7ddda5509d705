//! `edgebus completion SHELL`: a completion script on stdout.

use std::io::Write;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::{Cli, Failure};

/// Print a shell completion script.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  source <(edgebus completion bash)                      # this bash session
  edgebus completion zsh > \"${fpath[1]}/_edgebus\"        # zsh, from the next shell on
  edgebus completion fish > ~/.config/fish/completions/edgebus.fish")]
pub struct CompletionArgs {
    /// The shell.
    #[arg(value_enum)]
    shell: Shell,
}

pub fn run(args: CompletionArgs) -> Result<(), Failure> {
    // Rendered into memory first: clap_complete panics when its writer
    // fails, and stdout may be a pipe closed early (`| head`).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "edgebus", &mut script);
    match std::io::stdout().write_all(&script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Failure::other(e)),
        _ => Ok(()),
    }
}
