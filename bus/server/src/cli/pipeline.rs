//! `edgebus pipeline create | list | describe | delete`.

use clap::{Args, Subcommand};
use edgebus_client::{FailurePolicy, PipelineDescription, PluginRef};
use edgebus_proto::frame::{Request, Response};
use serde_json::json;

use super::plugin::{chain_text, parse_plugin_ref};
use super::{CommonArgs, Failure, Output, PolicyArg};

#[derive(Debug, Subcommand)]
pub enum PipelineCommand {
    /// Run a plugin chain continuously from one topic into another,
    /// exactly-once.
    Create(CreateArgs),
    /// List pipelines.
    List(CommonArgs),
    /// Show a pipeline's status, positions and counters.
    Describe(NamedArgs),
    /// Stop and delete a pipeline (its output stays).
    Delete(NamedArgs),
}

#[derive(Debug, Args)]
pub struct NamedArgs {
    /// Pipeline name.
    name: String,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Pipeline name.
    name: String,
    /// Source topic.
    #[arg(long)]
    from: String,
    /// Destination topic.
    #[arg(long)]
    to: String,
    /// Plugin to apply, `NAME[:key=value,…]`; repeat for a chain.
    #[arg(long = "plugin", value_parser = parse_plugin_ref, required = true)]
    plugins: Vec<PluginRef>,
    /// What to do with records a plugin fails on.
    #[arg(long, value_enum, default_value_t)]
    on_failure: PolicyArg,
    #[command(flatten)]
    common: CommonArgs,
}

fn print(pipelines: &[PipelineDescription], output: Output) {
    for p in pipelines {
        let c = &p.counters;
        match output {
            o @ (Output::Json | Output::Yaml) => o.emit(&json!({
                    "name": p.name, "from": p.from, "to": p.to,
                    "chain": chain_text(&p.chain),
                    "on_failure": format!("{:?}", p.on_failure).to_lowercase(),
                    "status": p.status,
                    "positions": p.positions.iter().map(|(p, o)| json!({"partition": p, "next_offset": o})).collect::<Vec<_>>(),
                    "counters": {"in": c.records_in, "out": c.records_out, "filtered": c.filtered, "failed": c.failed, "dead_lettered": c.dead_lettered},
                })),
            Output::Text => {
                println!(
                    "{}\t{} → {}\t{}\t[{}]",
                    p.name,
                    p.from,
                    p.to,
                    chain_text(&p.chain),
                    p.status
                );
                println!(
                    "  in={} out={} filtered={} failed={} dead-lettered={}",
                    c.records_in, c.records_out, c.filtered, c.failed, c.dead_lettered
                );
            }
        }
    }
}

pub async fn run(cmd: PipelineCommand) -> Result<(), Failure> {
    let (common, request) = match cmd {
        PipelineCommand::Create(a) => {
            let request = Request::PipelineCreate {
                name: a.name.clone(),
                from: a.from,
                to: a.to,
                chain: a.plugins,
                on_failure: FailurePolicy::from(a.on_failure),
            };
            let client = a.common.connect.connect().await?;
            client.request(&request).await?;
            println!("created pipeline {}", a.name);
            return Ok(());
        }
        PipelineCommand::Delete(a) => {
            let client = a.common.connect.connect().await?;
            client
                .request(&Request::PipelineDelete {
                    name: a.name.clone(),
                })
                .await?;
            println!("deleted pipeline {}", a.name);
            return Ok(());
        }
        PipelineCommand::List(c) => (c, Request::PipelineList),
        PipelineCommand::Describe(a) => (a.common, Request::PipelineDescribe { name: a.name }),
    };
    let client = common.connect.connect().await?;
    match client.request(&request).await? {
        Response::Pipelines(p) => print(&p, common.output),
        other => return Err(Failure::other(format!("unexpected response {other:?}"))),
    }
    Ok(())
}
