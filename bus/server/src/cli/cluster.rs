//! `edgebus cluster info`: the answering node's version, uptime,
//! listeners and data dir. `edgebus cluster status`: every node of the
//! cluster (address, up or down, which one is the controller) and the
//! control log's term and applied index; on a single node, the same as
//! `info`.

use clap::Subcommand;
use edgebus_proto::frame::{ClusterStatus, NodeInfo, Request, Response};
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
    /// Version, uptime, listeners and data dir of the node answering.
    Info(CommonArgs),
    /// Every node (id, address, up or down, the controller) with the
    /// control log's term and applied index; a single node describes
    /// itself as `info` does.
    Status(CommonArgs),
}

pub async fn run(cmd: ClusterCommand) -> Result<(), Failure> {
    let common = match cmd {
        ClusterCommand::Info(common) => return info(common).await,
        ClusterCommand::Status(common) => common,
    };
    let client = common.connect.connect().await?;
    let status = match client.request(&Request::ClusterStatus).await? {
        Response::ClusterStatus(status) => status,
        other => return Err(Failure::other(format!("unexpected reply {other:?}"))),
    };
    if status.nodes.is_empty() {
        return info(common).await;
    }
    match common.output {
        Output::Text => print_status(&status),
        o => o.emit(&json!({
            "mode": "cluster",
            "node": status.node,
            "controller": status.controller,
            "term": status.term,
            "commit_index": status.applied_index,
            "nodes": status.nodes.iter().map(|n| json!({
                "id": n.id,
                "address": n.address,
                "up": n.up,
                "controller": Some(n.id) == status.controller,
            })).collect::<Vec<_>>(),
        })),
    }
    Ok(())
}

fn print_status(status: &ClusterStatus) {
    let controller = status
        .controller
        .map_or_else(|| "none (electing)".to_owned(), |c| c.to_string());
    println!(
        "cluster of {} nodes; controller {controller}, term {}, commit index {} (as node {} sees it)",
        status.nodes.len(),
        status.term,
        status.applied_index,
        status.node
    );
    let mut table = table::Table::new(&["NODE", "ADDRESS", "STATE", "ROLE"]);
    for n in &status.nodes {
        let role = if Some(n.id) == status.controller {
            "controller"
        } else {
            ""
        };
        let state = if n.up { "up" } else { "down" };
        table.row(vec![
            n.id.to_string(),
            n.address.clone(),
            state.to_owned(),
            role.to_owned(),
        ]);
    }
    table.print();
}

async fn info(common: CommonArgs) -> Result<(), Failure> {
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
