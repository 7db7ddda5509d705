//! `NodeInfo`: what this node is and how it runs, for `edgebus cluster
//! info`. On a single node this is the whole cluster.

use std::path::{Path, PathBuf};
use std::time::Instant;

use edgebus_proto::frame::{
    ClusterNode, ClusterStatus, Listener, NodeInfo, PartitionReplication, RebuildingCopy, Response,
};

use crate::broker::Broker;

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

/// `PartitionStates`: each partition's placement and leadership from the
/// control log, with what this node's replica knows (its log end; on the
/// leader, the high watermark and every follower's log end). A single node
/// describes itself as the only replica.
pub fn partition_states(broker: &Broker, topic: &str) -> Response {
    let unknown = || crate::error::response(&crate::topics::UnknownTopic(topic.to_owned()));
    let Some(cluster) = &broker.cluster else {
        let Ok(spec) = broker.topics.spec(topic) else {
            return unknown();
        };
        let states = (0..spec.partitions)
            .map(|partition| {
                let high_watermark = broker.writer.high_watermark(topic, partition).unwrap_or(0);
                PartitionReplication {
                    partition,
                    leader: Some(0),
                    replicas: vec![0],
                    isr: vec![0],
                    leader_epoch: 0,
                    high_watermark,
                    log_end: high_watermark,
                    leading: true,
                    replica_log_ends: Vec::new(),
                    rebuilding: Vec::new(),
                    unclean_leader_election: false,
                }
            })
            .collect();
        return Response::PartitionStates(states);
    };
    // From the control log, so a node without a copy of the topic still
    // says where it lives.
    let state = cluster.state();
    let Some(meta) = state.topics.get(topic) else {
        return unknown();
    };
    let local = broker.writer.replica_states(topic);
    let states = meta
        .partitions
        .iter()
        .enumerate()
        .map(|(partition, p)| {
            let partition = partition as u32;
            let mine = local.iter().find(|s| s.partition == partition);
            PartitionReplication {
                partition,
                leader: p.leader,
                replicas: p.replicas.clone(),
                isr: p.isr.clone(),
                leader_epoch: p.leader_epoch,
                high_watermark: mine.map_or(0, |s| s.high_watermark),
                log_end: mine.map_or(0, |s| s.log_end),
                leading: mine.is_some_and(|s| s.leading_epoch.is_some()),
                replica_log_ends: mine.map(|s| s.follower_ends.clone()).unwrap_or_default(),
                rebuilding: p
                    .rebuilding
                    .iter()
                    .map(|(node, mark)| RebuildingCopy {
                        node: *node,
                        from: mark.from,
                        mending: mark.mend,
                    })
                    .collect(),
                unclean_leader_election: meta.unclean_leader_election,
            }
        })
        .collect();
    Response::PartitionStates(states)
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
