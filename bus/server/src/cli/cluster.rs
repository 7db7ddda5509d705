//! `edgebus cluster info` (alias `status`): the nodes a broker knows,
//! with version, uptime, listeners and data dir. A single node knows
//! itself only.

use clap::Subcommand;
use edgebus_proto::frame::{NodeInfo, Request, Response};
use serde_json::json;

use super::table;
use super::version::describe;
use super::{CommonArgs, Failure, Output};

/// Describe the cluster's nodes.
#[derive(Debug, Subcommand)]
#[command(after_help = "Examples:
  edgebus cluster info
  edgebus cluster status --broker gw-1:7171 --output json")]
pub enum ClusterCommand {
    /// Version, uptime, listeners and data dir of every node.
    #[command(visible_alias = "status")]
    Info(CommonArgs),
}

pub async fn run(cmd: ClusterCommand) -> Result<(), Failure> {
    let ClusterCommand::Info(common) = cmd;
    let client = common.connect.connect().await?;
    let node = match client.request(&Request::NodeInfo).await? {
        Response::NodeInfo(node) => node,
        other => return Err(Failure::other(format!("unexpected reply {other:?}"))),
    };
    // One node answers for itself; a cluster will list its members here.
    let nodes = [node];
    match common.output {
        Output::Text => print_text(&nodes),
        o => o.emit(&json!({
            "mode": "single-node",
            "nodes": nodes.iter().map(node_json).collect::<Vec<_>>(),
        })),
    }
    Ok(())
}

fn node_json(n: &NodeInfo) -> serde_json::Value {
    json!({
        "version": n.version,
        "commit": (!n.commit.is_empty()).then_some(&n.commit),
        "uptime_ms": n.uptime_ms,
        "listeners": n.listeners.iter().map(|l| json!({
            "protocol": l.protocol,
            "addr": l.addr,
        })).collect::<Vec<_>>(),
        "data_dir": n.data_dir,
        "data_bytes": n.data_bytes,
    })
}

fn print_text(nodes: &[NodeInfo]) {
    println!("single node (no cluster configured)");
    for n in nodes {
        println!("  version   {}", describe(&n.version, &n.commit));
        println!("  uptime    {}", table::duration(n.uptime_ms));
        for l in &n.listeners {
            println!("  listener  {} {}", l.protocol, l.addr);
        }
        println!(
            "  data dir  {} ({})",
            n.data_dir,
            table::bytes(n.data_bytes)
        );
    }
}
