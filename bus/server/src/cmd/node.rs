//! `NodeInfo`: what this node is and how it runs, for `edgebus cluster
//! info`. On a single node this is the whole cluster.

use std::path::{Path, PathBuf};
use std::time::Instant;

use edgebus_proto::frame::{ClusterNode, ClusterStatus, Listener, NodeInfo, Response};

use crate::cluster::Cluster;

/// The release this broker is.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit it was built from (see `build.rs`); empty when unknown.
pub const COMMIT: &str = env!("EDGEBUS_GIT_COMMIT");

/// Files counted at most when sizing the data directory, so a request
/// stays cheap whatever lies there.
pub const DATA_DIR_ENTRIES_MAX: usize = 100_000;

/// What a node knows about itself from its start.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// When the broker started.
    pub started: Instant,
    /// Each listener, as bound.
    pub listeners: Vec<Listener>,
    /// The data directory.
    pub data_dir: PathBuf,
}

/// `NodeInfo`. Sizing the data dir reads file metadata, so it runs off the
/// async workers.
pub async fn info(facts: &NodeFacts) -> Response {
    let dir = facts.data_dir.clone();
    let data_bytes = tokio::task::spawn_blocking(move || dir_bytes(&dir, DATA_DIR_ENTRIES_MAX))
        .await
        .unwrap_or(0);
    Response::NodeInfo(NodeInfo {
        version: VERSION.to_owned(),
        commit: COMMIT.to_owned(),
        uptime_ms: facts.started.elapsed().as_millis() as u64,
        listeners: facts.listeners.clone(),
        data_dir: facts.data_dir.display().to_string(),
        data_bytes,
    })
}

/// `ClusterStatus`: the control log and every node as this node sees
/// them; a single node lists no nodes.
pub fn cluster_status(cluster: Option<&Cluster>) -> Response {
    let Some(cluster) = cluster else {
        return Response::ClusterStatus(ClusterStatus {
            node: 0,
            controller: None,
            term: 0,
            applied_index: 0,
            nodes: Vec::new(),
        });
    };
    let status = cluster.status();
    Response::ClusterStatus(ClusterStatus {
        node: status.node,
        controller: status.controller,
        term: status.term,
        applied_index: status.applied_index,
        nodes: status
            .nodes
            .into_iter()
            .map(|n| ClusterNode {
                id: n.id,
                address: n.address,
                up: n.up,
            })
            .collect(),
    })
}

/// Bytes of the regular files under `dir`, looking at no more than
/// `entries_max` entries. Unreadable entries count as nothing; symbolic
/// links are not followed.
pub fn dir_bytes(dir: &Path, entries_max: usize) -> u64 {
    let mut total = 0u64;
    let mut seen = 0usize;
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > entries_max {
                return total;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_bytes_counts_nested_files_and_stops_at_the_entry_cap() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 100]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b"), [0u8; 23]).unwrap();
        assert_eq!(dir_bytes(dir.path(), 100), 123);
        assert!(dir_bytes(dir.path(), 1) <= 100);
        assert_eq!(dir_bytes(&dir.path().join("missing"), 100), 0);
    }
}
