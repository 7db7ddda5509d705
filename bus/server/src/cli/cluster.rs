//! `edgebus cluster info` (alias `status`): the nodes a broker knows,
//! with version, uptime, listeners and data dir. A single node knows
//! itself only.

use clap::Subcommand;
use edgebus_proto::frame::{NodeInfo, Request, Response};
use serde_json::json;

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
        println!("  uptime    {}", uptime(n.uptime_ms));
        for l in &n.listeners {
            println!("  listener  {} {}", l.protocol, l.addr);
        }
        println!("  data dir  {} ({})", n.data_dir, bytes(n.data_bytes));
    }
}

/// `2d 3h 4m 5s`, leading zero units left out.
fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m {s}s"),
    }
}

/// Bytes in decimal units, as `bench` reports MB.
fn bytes(n: u64) -> String {
    match n {
        0..1_000 => format!("{n} B"),
        1_000..1_000_000 => format!("{:.1} kB", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        _ => format!("{:.1} GB", n as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_and_bytes_read_naturally() {
        assert_eq!(uptime(999), "0s");
        assert_eq!(uptime(61_000), "1m 1s");
        assert_eq!(uptime(3_600_000), "1h 0m 0s");
        assert_eq!(uptime(90_061_000), "1d 1h 1m 1s");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1_500), "1.5 kB");
        assert_eq!(bytes(2_500_000), "2.5 MB");
    }
}
