//! `edgebus version`: this binary's release and the commit it was built
//! from.

use clap::Args;
use serde_json::json;

use super::{Failure, Output};
use edgebus::cmd::node::{COMMIT, VERSION};

/// Print the version and git commit of this binary.
#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    output: Output,
}

/// `0.1.0 (commit 0123456789ab)`, or the bare version when the build had
/// no git checkout.
pub fn describe(version: &str, commit: &str) -> String {
    if commit.is_empty() {
        version.to_owned()
    } else {
        format!("{version} (commit {commit})")
    }
}

pub fn run(args: VersionArgs) -> Result<(), Failure> {
    match args.output {
        Output::Text => println!("edgebus {}", describe(VERSION, COMMIT)),
        o => o.emit(&json!({
            "version": VERSION,
            "commit": (!COMMIT.is_empty()).then_some(COMMIT),
        })),
    }
    Ok(())
}
