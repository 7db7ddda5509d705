//! `edgebus pipeline create | list | describe | delete`.

use clap::{Args, Subcommand};
use edgebus_client::{Client, FailurePolicy, PipelineDescription, PluginRef};
use edgebus_proto::frame::{Request, Response};
use serde_json::json;

use super::plugin::{chain_text, parse_plugin_ref, policy_name};
use super::table::{self, Table};
use super::topic::{counters_json, counters_text};
use super::{CommonArgs, Failure, Output, PolicyArg};

#[derive(Debug, Subcommand)]
#[command(after_help = "Examples:
  edgebus pipeline create thin --from sensors --to sensors-1in10 --plugin downsample:every=10
  edgebus pipeline describe thin")]
pub enum PipelineCommand {
    /// Run a plugin chain continuously from one topic into another,
    /// exactly-once. A pipeline whose output would feed its own input,
    /// directly or through other pipelines, is refused.
    #[command(after_help = "Examples:
  edgebus pipeline create thin --from sensors --to sensors-1in10 --plugin downsample:every=10
  edgebus pipeline create clean --from raw --to clean --plugin json-filter:field=ok,op===,value=true \\
      --plugin redact:fields=owner --on-failure skip --output json")]
    Create(CreateArgs),
    /// List pipelines.
    #[command(after_help = "Examples:
  edgebus pipeline list
  edgebus pipeline list --output json")]
    List(CommonArgs),
    /// Show a pipeline's status, positions and counters.
    #[command(after_help = "Examples:
  edgebus pipeline describe thin
  edgebus pipeline describe thin --output yaml")]
    Describe(NamedArgs),
    /// Stop and delete a pipeline (its output stays).
    #[command(after_help = "Examples:
  edgebus pipeline delete thin
  edgebus pipeline delete thin --output json")]
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

fn pipeline_json(p: &PipelineDescription) -> serde_json::Value {
    let c = &p.counters;
    json!({
        "name": p.name, "from": p.from, "to": p.to,
        "chain": chain_text(&p.chain),
        "on_failure": policy_name(p.on_failure),
        "status": p.status,
        "positions": p.positions.iter().map(|(p, o)| json!({"partition": p, "next_offset": o})).collect::<Vec<_>>(),
        "counters": counters_json(c),
    })
}

/// `pipeline list`: a table, or one object per pipeline.
fn list(pipelines: &[PipelineDescription], output: Output) {
    match output {
        o @ (Output::Json | Output::Yaml) => {
            for p in pipelines {
                o.emit(&pipeline_json(p));
            }
        }
        Output::Text => {
            let mut t = Table::new(&["NAME", "FROM", "TO", "CHAIN", "ON-FAILURE", "STATUS"]);
            for p in pipelines {
                t.row(vec![
                    p.name.clone(),
                    p.from.clone(),
                    p.to.clone(),
                    chain_text(&p.chain),
                    policy_name(p.on_failure),
                    p.status.clone(),
                ]);
            }
            t.print();
        }
    }
}

/// `pipeline describe`: a summary, then each source partition's position.
fn describe(p: &PipelineDescription, output: Output) {
    if let o @ (Output::Json | Output::Yaml) = output {
        o.emit(&pipeline_json(p));
        return;
    }
    print!(
        "{}",
        table::summary(&[
            ("name", p.name.clone()),
            ("from", p.from.clone()),
            ("to", p.to.clone()),
            ("chain", chain_text(&p.chain)),
            ("on failure", policy_name(p.on_failure)),
            ("status", p.status.clone()),
            ("counters", counters_text(&p.counters)),
        ])
    );
    if !p.positions.is_empty() {
        println!();
        let mut t = Table::new(&["SOURCE-PARTITION", "NEXT-OFFSET"]);
        for (partition, next) in &p.positions {
            t.row(vec![partition.to_string(), next.to_string()]);
        }
        t.print();
    }
}

async fn pipelines(
    client: &Client,
    request: &Request,
) -> Result<Vec<PipelineDescription>, Failure> {
    match client.request(request).await? {
        Response::Pipelines(p) => Ok(p),
        other => Err(Failure::other(format!("unexpected response {other:?}"))),
    }
}

pub async fn run(cmd: PipelineCommand) -> Result<(), Failure> {
    match cmd {
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
            match a.common.output {
                o @ (Output::Json | Output::Yaml) => o.emit(&json!({"created": a.name})),
                Output::Text => println!("created pipeline {}", a.name),
            }
        }
        PipelineCommand::Delete(a) => {
            let client = a.common.connect.connect().await?;
            client
                .request(&Request::PipelineDelete {
                    name: a.name.clone(),
                })
                .await?;
            match a.common.output {
                o @ (Output::Json | Output::Yaml) => o.emit(&json!({"deleted": a.name})),
                Output::Text => println!("deleted pipeline {}", a.name),
            }
        }
        PipelineCommand::List(c) => {
            let client = c.connect.connect().await?;
            list(&pipelines(&client, &Request::PipelineList).await?, c.output);
        }
        PipelineCommand::Describe(a) => {
            let client = a.common.connect.connect().await?;
            let request = Request::PipelineDescribe { name: a.name };
            for p in pipelines(&client, &request).await? {
                describe(&p, a.common.output);
            }
        }
    }
    Ok(())
}
