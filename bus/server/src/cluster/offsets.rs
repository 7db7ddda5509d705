//! Consumer-group offsets in the control log: a cluster node's
//! [`ReplicatedOffsets`], so committed offsets survive the loss of any node.
//!
//! Each commit is one control-log entry per group. The node that proposed
//! it answers only once it has applied the entry, so a client that
//! commits and then fetches through the same node reads what it wrote.

use std::collections::BTreeMap;

use edgebus_core::controller::{ControlError, ControlOutcome, ControlRequest};
use edgebus_store::{CommitError, CommittedOffset, OffsetCommit};
use futures::future::BoxFuture;

use super::{APPLY_WAIT, Cluster};
use crate::groups::{GroupsError, ReplicatedOffsets};

impl ReplicatedOffsets for Cluster {
    fn commit(&self, commits: Vec<OffsetCommit>) -> BoxFuture<'static, Result<(), GroupsError>> {
        let cluster = self.clone();
        Box::pin(async move {
            let state = cluster.state();
            let mut by_group: BTreeMap<String, Vec<(String, u32, u64)>> = BTreeMap::new();
            for c in commits {
                let partitions = state
                    .topics
                    .get(&c.topic)
                    .ok_or_else(|| CommitError::UnknownTopic(c.topic.clone()))?
                    .partitions
                    .len();
                if c.partition as usize >= partitions {
                    return Err(CommitError::UnknownPartition {
                        topic: c.topic,
                        partition: c.partition,
                    }
                    .into());
                }
                by_group
                    .entry(c.group)
                    .or_default()
                    .push((c.topic, c.partition, c.offset));
            }
            for (group, offsets) in by_group {
                let request = ControlRequest::CommitOffsets {
                    group: group.clone(),
                    offsets,
                };
                // One wait, for the entry's index, which fails the commit
                // when it runs out: `propose`'s wait only warns. A group's
                // version cannot stand in for the index, since versions
                // start again after the group's offsets are deleted.
                let (answer, index) = cluster
                    .commit_entry(request)
                    .await
                    .map_err(|e| GroupsError::ControlLog(e.to_string()))?;
                match answer {
                    Ok(ControlOutcome::OffsetsCommitted { .. }) => {}
                    Ok(other) => {
                        return Err(GroupsError::ControlLog(format!("unexpected {other:?}")));
                    }
                    Err(e) => return Err(GroupsError::ControlLog(e.to_string())),
                }
                cluster.applied_here(index).await.map_err(|_| {
                    GroupsError::ControlLog(format!(
                        "the commit was taken but not applied on this node within {APPLY_WAIT:?}"
                    ))
                })?;
            }
            Ok(())
        })
    }

    fn committed(&self, group: &str) -> Vec<CommittedOffset> {
        self.state()
            .offsets
            .get(group)
            .map(|g| {
                g.topics
                    .iter()
                    .flat_map(|(topic, partitions)| {
                        partitions
                            .iter()
                            .map(|(partition, offset)| CommittedOffset {
                                topic: topic.clone(),
                                partition: *partition,
                                offset: *offset,
                            })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn groups(&self) -> Vec<String> {
        self.state().offsets.keys().cloned().collect()
    }

    fn delete(&self, group: &str) -> BoxFuture<'static, Result<bool, GroupsError>> {
        let cluster = self.clone();
        let group = group.to_owned();
        Box::pin(async move {
            let request = ControlRequest::DeleteGroupOffsets { group };
            match cluster.propose(request).await {
                Ok(Ok(_)) => Ok(true),
                Ok(Err(ControlError::UnknownGroup(_))) => Ok(false),
                Ok(Err(e)) => Err(GroupsError::ControlLog(e.to_string())),
                Err(e) => Err(GroupsError::ControlLog(e.to_string())),
            }
        })
    }
}
