//! The plugin registry, topics' ingest chains and pipelines in the control
//! log, so they survive the loss of any node.
//!
//! The state holds what every node must agree on: each plugin's name,
//! version and digest, each chain's plugins, each pipeline's definition and
//! checkpointed source positions. A component's bytes travel once, in the
//! [`ControlRequest::AddPlugin`] entry, and the node keeps them beside the
//! state by digest ([`ClusterState::digests`]): the state is written whole
//! at every apply, and must stay small.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{ClusterState, ControlError, ControlOutcome, PartitionMeta};

/// The largest component the control log carries. Bundled plugins are
/// about 130 KiB. The broker bounds how many entries one control-log
/// message carries by this, so a message always fits the peer frame.
pub const MAX_REPLICATED_PLUGIN_BYTES: usize = 1 << 20;

/// A plugin of the cluster's registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginMeta {
    /// 1 for the first upload, then +1 per replacement.
    pub version: u32,
    /// Hex SHA-256 of the component: the key of its bytes beside the state.
    pub digest: String,
    /// `filter` or `transform`.
    pub kind: String,
    /// Size of the component.
    pub size_bytes: u64,
    /// When this version was added (ms since the Unix epoch, the
    /// proposer's clock).
    pub added_ms: i64,
}

/// A topic's ingest chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestMeta {
    /// The plugins it runs, in order.
    pub plugins: Vec<String>,
    /// The broker's encoding of the chain (plugins, parameters, failure
    /// policy), opaque here.
    pub chain: Vec<u8>,
}

/// A pipeline: its definition and how far it has safely got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineMeta {
    /// Source topic.
    pub from: String,
    /// Destination topic.
    pub to: String,
    /// The plugins it runs, in order.
    pub plugins: Vec<String>,
    /// The broker's encoding of the definition, opaque here.
    pub definition: Vec<u8>,
    /// Source partition → the next source offset whose outputs are not
    /// known to be on every in-sync replica of the destination.
    pub positions: BTreeMap<u32, u64>,
    /// Names the producer ids its outputs are stamped with (see
    /// [`crate::sourced`]); unique in the cluster's life. 0 for a pipeline
    /// created before outputs were stamped: it writes them unstamped.
    #[serde(default)]
    pub serial: u64,
    /// Its plugin state as of some source positions, for a new runner to
    /// start from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<PipelineStateCheckpoint>,
}

/// A pipeline's plugin state as it stood after its steps up to some source
/// positions, which a new runner restores with them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineStateCheckpoint {
    /// Source partition → the next source offset.
    pub positions: BTreeMap<u32, u64>,
    /// The broker's encoding of the state entries, opaque here; at most
    /// [`MAX_PIPELINE_STATE_BYTES`].
    #[serde(with = "base64_bytes")]
    pub state: Vec<u8>,
}

/// The largest pipeline state checkpoint the control log takes: every
/// checkpoint is a proposal every node applies and keeps.
pub const MAX_PIPELINE_STATE_BYTES: usize = 256 << 10;

impl ClusterState {
    pub(super) fn add_plugin(
        &mut self,
        name: &str,
        digest: &str,
        kind: &str,
        added_ms: i64,
        wasm: &[u8],
    ) -> Result<ControlOutcome, ControlError> {
        if wasm.len() > MAX_REPLICATED_PLUGIN_BYTES {
            return Err(ControlError::PluginTooLarge {
                size_bytes: wasm.len(),
                max_bytes: MAX_REPLICATED_PLUGIN_BYTES,
            });
        }
        let version = match self.plugins.get(name) {
            None => 1,
            Some(old) => old.version.saturating_add(1),
        };
        self.plugins.insert(
            name.to_owned(),
            PluginMeta {
                version,
                digest: digest.to_owned(),
                kind: kind.to_owned(),
                size_bytes: wasm.len() as u64,
                added_ms,
            },
        );
        Ok(ControlOutcome::PluginAdded { version })
    }

    pub(super) fn remove_plugin(&mut self, name: &str) -> Result<ControlOutcome, ControlError> {
        if !self.plugins.contains_key(name) {
            return Err(ControlError::UnknownPlugin(name.to_owned()));
        }
        let users = self.plugin_users(name);
        if !users.is_empty() {
            return Err(ControlError::PluginInUse {
                name: name.to_owned(),
                users,
            });
        }
        self.plugins.remove(name);
        Ok(ControlOutcome::Done)
    }

    pub(super) fn set_ingest(
        &mut self,
        topic: &str,
        plugins: &[String],
        chain: &[u8],
    ) -> Result<ControlOutcome, ControlError> {
        if !self.topics.contains_key(topic) {
            return Err(ControlError::UnknownTopic(topic.to_owned()));
        }
        self.check_plugins(plugins)?;
        if plugins.is_empty() {
            self.ingest.remove(topic);
        } else {
            self.ingest.insert(
                topic.to_owned(),
                IngestMeta {
                    plugins: plugins.to_vec(),
                    chain: chain.to_vec(),
                },
            );
        }
        Ok(ControlOutcome::Done)
    }

    pub(super) fn create_pipeline(
        &mut self,
        name: &str,
        from: &str,
        to: &str,
        plugins: &[String],
        definition: &[u8],
    ) -> Result<ControlOutcome, ControlError> {
        if self.pipelines.contains_key(name) {
            return Err(ControlError::PipelineExists(name.to_owned()));
        }
        let source = self
            .topics
            .get(from)
            .ok_or_else(|| ControlError::UnknownTopic(from.to_owned()))?;
        let destination = self
            .topics
            .get(to)
            .ok_or_else(|| ControlError::UnknownTopic(to.to_owned()))?;
        if destination.partitions.len() != 1 {
            // The runner commits outputs through its own partition engine,
            // which only the leader of a partition has.
            return Err(ControlError::InvalidPipeline(format!(
                "destination {to:?} has {} partitions; a pipeline in a cluster writes to a \
                 one-partition topic (several partitions, led by several nodes, are not built)",
                destination.partitions.len()
            )));
        }
        // Any replica of the destination may come to lead it and run the
        // pipeline, reading the source from its own copy.
        let runners = &destination.partitions[0].replicas;
        if let Some(node) = runners
            .iter()
            .find(|n| source.partitions.iter().any(|p| !p.replicas.contains(n)))
        {
            return Err(ControlError::InvalidPipeline(format!(
                "node {node} may run it (it holds a copy of {to:?}) but holds no copy of \
                 some partition of {from:?}; replicate the source to every node that holds \
                 the destination"
            )));
        }
        self.check_plugins(plugins)?;
        if let Some(path) = self.pipeline_cycle(name, from, to) {
            return Err(ControlError::PipelineCycle {
                name: name.to_owned(),
                path,
            });
        }
        if self.pipeline_serial >= crate::sourced::MAX_SERIAL {
            return Err(ControlError::InvalidPipeline(
                "the cluster has created as many pipelines as producer ids can name".into(),
            ));
        }
        self.pipeline_serial += 1;
        self.pipelines.insert(
            name.to_owned(),
            PipelineMeta {
                from: from.to_owned(),
                to: to.to_owned(),
                plugins: plugins.to_vec(),
                definition: definition.to_vec(),
                positions: BTreeMap::new(),
                serial: self.pipeline_serial,
                state: None,
            },
        );
        Ok(ControlOutcome::Done)
    }

    /// Refuses partitions added to `topic` that would break a pipeline's
    /// placement: a destination must keep one partition, and every node
    /// that may run a pipeline must hold a copy of each source partition.
    pub(super) fn pipelines_take_partitions(
        &self,
        topic: &str,
        added: &[PartitionMeta],
    ) -> Result<(), ControlError> {
        for (name, pipeline) in &self.pipelines {
            if pipeline.to == topic {
                return Err(ControlError::InvalidPipeline(format!(
                    "pipeline {name:?} writes to {topic:?}, which must keep one partition \
                     in a cluster"
                )));
            }
            if pipeline.from != topic {
                continue;
            }
            let runners = self
                .topics
                .get(&pipeline.to)
                .and_then(|t| t.partitions.first())
                .map(|p| p.replicas.as_slice())
                .unwrap_or_default();
            if let Some(node) = runners
                .iter()
                .find(|n| added.iter().any(|p| !p.replicas.contains(n)))
            {
                return Err(ControlError::InvalidPipeline(format!(
                    "pipeline {name:?} reads {topic:?} and may run on node {node}, which \
                     would hold no copy of some added partition"
                )));
            }
        }
        Ok(())
    }

    pub(super) fn checkpoint_pipeline(
        &mut self,
        name: &str,
        positions: &[(u32, u64)],
        state: Option<&PipelineStateCheckpoint>,
        leader_epoch: Option<i32>,
    ) -> Result<ControlOutcome, ControlError> {
        let current = self
            .pipelines
            .get(name)
            .and_then(|meta| self.partition(&meta.to, 0))
            .map(|p| p.leader_epoch);
        if let Some(epoch) = leader_epoch
            && current != Some(epoch)
        {
            return Err(ControlError::InvalidPipeline(format!(
                "checkpoint of pipeline {name:?} from leader epoch {epoch} of its destination, \
                 which is at {current:?}"
            )));
        }
        let meta = self
            .pipelines
            .get_mut(name)
            .ok_or_else(|| ControlError::UnknownPipeline(name.to_owned()))?;
        if let Some(state) = state {
            if state.state.len() > MAX_PIPELINE_STATE_BYTES {
                return Err(ControlError::InvalidPipeline(format!(
                    "a state checkpoint of {} bytes is above the {MAX_PIPELINE_STATE_BYTES} \
                     the control log takes",
                    state.state.len()
                )));
            }
            // Never back on any partition: a deposed runner's late
            // checkpoint cannot replace its successor's.
            let behind = meta.state.as_ref().is_some_and(|current| {
                current
                    .positions
                    .iter()
                    .any(|(p, o)| state.positions.get(p).is_none_or(|n| n < o))
            });
            if !behind {
                meta.state = Some(state.clone());
            }
        }
        // Never backwards: a deposed runner's late checkpoint cannot undo
        // progress its successor made.
        for (partition, offset) in positions {
            let at = meta.positions.entry(*partition).or_default();
            *at = (*at).max(*offset);
        }
        Ok(ControlOutcome::Done)
    }

    /// Where a plugin is used, as `topic:NAME` and `pipeline:NAME`.
    pub fn plugin_users(&self, plugin: &str) -> Vec<String> {
        let uses = |plugins: &[String]| plugins.iter().any(|p| p == plugin);
        let mut users: Vec<String> = self
            .ingest
            .iter()
            .filter(|(_, chain)| uses(&chain.plugins))
            .map(|(topic, _)| format!("topic:{topic}"))
            .collect();
        users.extend(
            self.pipelines
                .iter()
                .filter(|(_, p)| uses(&p.plugins))
                .map(|(name, _)| format!("pipeline:{name}")),
        );
        users
    }

    /// The pipelines that read or write a topic, as `pipeline:NAME`.
    pub fn topic_users(&self, topic: &str) -> Vec<String> {
        self.pipelines
            .iter()
            .filter(|(_, p)| p.from == topic || p.to == topic)
            .map(|(name, _)| format!("pipeline:{name}"))
            .collect()
    }

    /// The loop a pipeline `name` from `from` to `to` would close, as
    /// `pipeline: from → to` steps starting with it: a shortest path of
    /// pipelines from `to` back to `from`, found breadth-first (each topic
    /// visited once, so it ends).
    fn pipeline_cycle(&self, name: &str, from: &str, to: &str) -> Option<Vec<String>> {
        let step = |pipeline: &str, meta_from: &str, meta_to: &str| {
            format!("{pipeline}: {meta_from} → {meta_to}")
        };
        let mut reached_by: BTreeMap<&str, Option<&str>> = BTreeMap::from([(to, None)]);
        let mut queue = std::collections::VecDeque::from([to]);
        while let Some(topic) = queue.pop_front() {
            if topic == from {
                let mut path = vec![step(name, from, to)];
                let mut at = topic;
                let mut back = Vec::new();
                while let Some(Some(pipeline)) = reached_by.get(at) {
                    let meta = &self.pipelines[*pipeline];
                    back.push(step(pipeline, &meta.from, &meta.to));
                    at = &meta.from;
                }
                path.extend(back.into_iter().rev());
                return Some(path);
            }
            for (pipeline, meta) in &self.pipelines {
                if meta.from == topic && !reached_by.contains_key(meta.to.as_str()) {
                    reached_by.insert(&meta.to, Some(pipeline));
                    queue.push_back(&meta.to);
                }
            }
        }
        None
    }

    /// The digests of every plugin's component: the bytes a node keeps.
    pub fn digests(&self) -> BTreeSet<&str> {
        self.plugins.values().map(|p| p.digest.as_str()).collect()
    }

    fn check_plugins(&self, plugins: &[String]) -> Result<(), ControlError> {
        match plugins.iter().find(|p| !self.plugins.contains_key(*p)) {
            Some(missing) => Err(ControlError::UnknownPlugin(missing.clone())),
            None => Ok(()),
        }
    }
}

/// Component bytes as base64 in the control log's JSON: a third larger
/// than the bytes, where a JSON array of numbers is about four times. For
/// `#[serde(with = "base64_bytes")]`.
pub mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `bytes` as a base64 string.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    /// Reads a base64 string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::super::ControlRequest;
    use super::*;

    fn cluster_with_topics() -> ClusterState {
        let mut state = ClusterState::default();
        for node in 1..=3 {
            state
                .apply(&ControlRequest::RegisterNode {
                    node,
                    address: format!("127.0.0.1:{node}"),
                    incarnation: 1,
                })
                .unwrap();
        }
        for (name, partitions) in [("in", 2), ("out", 1), ("wide", 3)] {
            state
                .apply(&ControlRequest::CreateTopic {
                    name: name.into(),
                    partitions,
                    replication_factor: 3,
                    min_insync: 2,
                    unclean_leader_election: false,
                    spec: Vec::new(),
                })
                .unwrap();
        }
        state
    }

    fn add(name: &str, wasm: Vec<u8>) -> ControlRequest {
        ControlRequest::AddPlugin {
            name: name.into(),
            digest: format!("digest-of-{}", wasm.len()),
            kind: "filter".into(),
            added_ms: 1,
            wasm,
        }
    }

    fn pipeline(name: &str, to: &str) -> ControlRequest {
        ControlRequest::CreatePipeline {
            name: name.into(),
            from: "in".into(),
            to: to.into(),
            plugins: vec!["p".into()],
            definition: Vec::new(),
        }
    }

    #[test]
    fn plugin_versions_count_up_and_removal_waits_for_its_users() {
        let mut state = cluster_with_topics();
        assert_eq!(
            state.apply(&add("p", vec![1])),
            Ok(ControlOutcome::PluginAdded { version: 1 })
        );
        assert_eq!(
            state.apply(&add("p", vec![1, 2])),
            Ok(ControlOutcome::PluginAdded { version: 2 })
        );
        assert_eq!(state.plugins["p"].digest, "digest-of-2");
        assert_eq!(state.digests(), BTreeSet::from(["digest-of-2"]));
        let ingest = ControlRequest::SetIngest {
            topic: "in".into(),
            plugins: vec!["p".into()],
            chain: vec![7],
        };
        state.apply(&ingest).unwrap();
        state.apply(&pipeline("pipe", "out")).unwrap();
        assert_eq!(
            state.apply(&ControlRequest::RemovePlugin { name: "p".into() }),
            Err(ControlError::PluginInUse {
                name: "p".into(),
                users: vec!["topic:in".into(), "pipeline:pipe".into()],
            })
        );
        state
            .apply(&ControlRequest::DeletePipeline {
                name: "pipe".into(),
            })
            .unwrap();
        state
            .apply(&ControlRequest::SetIngest {
                topic: "in".into(),
                plugins: Vec::new(),
                chain: Vec::new(),
            })
            .unwrap();
        state
            .apply(&ControlRequest::RemovePlugin { name: "p".into() })
            .unwrap();
        assert!(state.digests().is_empty());
        assert_eq!(
            state.apply(&ControlRequest::RemovePlugin { name: "p".into() }),
            Err(ControlError::UnknownPlugin("p".into()))
        );
    }

    #[test]
    fn a_plugin_over_the_replicated_limit_is_refused() {
        let mut state = cluster_with_topics();
        assert_eq!(
            state.apply(&add("big", vec![0; MAX_REPLICATED_PLUGIN_BYTES + 1])),
            Err(ControlError::PluginTooLarge {
                size_bytes: MAX_REPLICATED_PLUGIN_BYTES + 1,
                max_bytes: MAX_REPLICATED_PLUGIN_BYTES,
            })
        );
        assert!(state.plugins.is_empty());
    }

    #[test]
    fn chains_and_pipelines_need_known_plugins_and_topics() {
        let mut state = cluster_with_topics();
        let ingest = |topic: &str| ControlRequest::SetIngest {
            topic: topic.into(),
            plugins: vec!["p".into()],
            chain: Vec::new(),
        };
        assert_eq!(
            state.apply(&ingest("in")),
            Err(ControlError::UnknownPlugin("p".into()))
        );
        state.apply(&add("p", vec![1])).unwrap();
        assert_eq!(
            state.apply(&ingest("nope")),
            Err(ControlError::UnknownTopic("nope".into()))
        );
        assert!(matches!(
            state.apply(&pipeline("pipe", "wide")),
            Err(ControlError::InvalidPipeline(_))
        ));
        state
            .apply(&ControlRequest::CreateTopic {
                name: "narrow".into(),
                partitions: 1,
                replication_factor: 1,
                min_insync: 1,
                unclean_leader_election: false,
                spec: Vec::new(),
            })
            .unwrap();
        let runner = state.topics["narrow"].partitions[0].replicas[0];
        assert_eq!(
            state.apply(&ControlRequest::CreatePipeline {
                name: "down".into(),
                from: "narrow".into(),
                to: "out".into(),
                plugins: vec!["p".into()],
                definition: Vec::new(),
            }),
            Err(ControlError::InvalidPipeline(format!(
                "node {} may run it (it holds a copy of \"out\") but holds no copy of some \
                 partition of \"narrow\"; replicate the source to every node that holds the \
                 destination",
                (1..=3).find(|n| *n != runner).unwrap()
            )))
        );
        state.apply(&pipeline("pipe", "out")).unwrap();
        assert_eq!(
            state.apply(&pipeline("pipe", "out")),
            Err(ControlError::PipelineExists("pipe".into()))
        );
    }

    #[test]
    fn partitions_added_to_a_pipeline_topic_keep_its_placement_rules() {
        let mut state = cluster_with_topics();
        state.apply(&add("p", vec![1])).unwrap();
        state.apply(&pipeline("pipe", "out")).unwrap();
        let grow = |name: &str, partitions| ControlRequest::AddPartitions {
            name: name.into(),
            partitions,
            spec: Vec::new(),
        };
        assert!(matches!(
            state.apply(&grow("out", 2)),
            Err(ControlError::InvalidPipeline(_))
        ));
        state.apply(&grow("in", 4)).unwrap();
        assert_eq!(state.topics["in"].partitions.len(), 4);

        // A source replicated to fewer nodes than may run the pipeline.
        let mut narrow = cluster_with_topics();
        narrow.apply(&add("p", vec![1])).unwrap();
        narrow.apply(&pipeline("pipe", "out")).unwrap();
        narrow.topics.get_mut("in").unwrap().replication_factor = 1;
        assert!(matches!(
            narrow.apply(&grow("in", 3)),
            Err(ControlError::InvalidPipeline(_))
        ));
        assert_eq!(narrow.topics["in"].partitions.len(), 2);
    }

    #[test]
    fn a_topic_a_pipeline_uses_is_not_deleted_and_a_deleted_topic_loses_its_chain() {
        let mut state = cluster_with_topics();
        state.apply(&add("p", vec![1])).unwrap();
        state.apply(&pipeline("pipe", "out")).unwrap();
        assert_eq!(
            state.apply(&ControlRequest::DeleteTopic { name: "out".into() }),
            Err(ControlError::TopicInUse {
                topic: "out".into(),
                users: vec!["pipeline:pipe".into()],
            })
        );
        state
            .apply(&ControlRequest::SetIngest {
                topic: "wide".into(),
                plugins: vec!["p".into()],
                chain: Vec::new(),
            })
            .unwrap();
        state
            .apply(&ControlRequest::DeleteTopic {
                name: "wide".into(),
            })
            .unwrap();
        assert!(state.ingest.is_empty());
    }

    #[test]
    fn a_pipeline_closing_a_loop_is_refused_with_the_loop() {
        let mut state = cluster_with_topics();
        state.apply(&add("p", vec![1])).unwrap();
        for name in ["mid", "back"] {
            state
                .apply(&ControlRequest::CreateTopic {
                    name: name.into(),
                    partitions: 1,
                    replication_factor: 3,
                    min_insync: 1,
                    unclean_leader_election: false,
                    spec: Vec::new(),
                })
                .unwrap();
        }
        let create = |name: &str, from: &str, to: &str| ControlRequest::CreatePipeline {
            name: name.into(),
            from: from.into(),
            to: to.into(),
            plugins: vec!["p".into()],
            definition: Vec::new(),
        };
        state.apply(&create("a", "out", "mid")).unwrap();
        state.apply(&create("b", "mid", "back")).unwrap();
        assert_eq!(
            state.apply(&create("c", "back", "out")),
            Err(ControlError::PipelineCycle {
                name: "c".into(),
                path: vec![
                    "c: back → out".into(),
                    "a: out → mid".into(),
                    "b: mid → back".into(),
                ],
            })
        );
        assert!(matches!(
            state.apply(&create("self", "back", "back")),
            Err(ControlError::PipelineCycle { .. })
        ));
    }

    #[test]
    fn pipeline_checkpoints_never_move_back() {
        let mut state = cluster_with_topics();
        state.apply(&add("p", vec![1])).unwrap();
        state.apply(&pipeline("pipe", "out")).unwrap();
        let with_state = |positions: Vec<(u32, u64)>, tag: u8| {
            let state = PipelineStateCheckpoint {
                positions: positions.iter().copied().collect(),
                state: vec![tag],
            };
            ControlRequest::CheckpointPipeline {
                name: "pipe".into(),
                positions,
                state: Some(state),
                leader_epoch: None,
            }
        };
        state.apply(&with_state(vec![(0, 10), (1, 4)], 1)).unwrap();
        state.apply(&with_state(vec![(0, 7), (1, 9)], 2)).unwrap();
        assert_eq!(
            state.pipelines["pipe"].positions,
            BTreeMap::from([(0, 10), (1, 9)])
        );
        // A state goes with its own positions, all at once: one behind on
        // any partition is not taken.
        let kept = state.pipelines["pipe"].state.clone().unwrap();
        assert_eq!(
            (kept.positions, kept.state),
            (BTreeMap::from([(0, 10), (1, 4)]), vec![1])
        );
        state.apply(&with_state(vec![(0, 11), (1, 4)], 3)).unwrap();
        assert_eq!(state.pipelines["pipe"].state.as_ref().unwrap().state, [3]);
        let mut too_large = with_state(vec![(0, 12), (1, 5)], 4);
        if let ControlRequest::CheckpointPipeline { state: Some(s), .. } = &mut too_large {
            s.state = vec![0; MAX_PIPELINE_STATE_BYTES + 1];
        }
        assert!(matches!(
            state.apply(&too_large),
            Err(ControlError::InvalidPipeline(_))
        ));
        assert_eq!(
            state.apply(&ControlRequest::CheckpointPipeline {
                name: "gone".into(),
                positions: Vec::new(),
                state: None,
                leader_epoch: None,
            }),
            Err(ControlError::UnknownPipeline("gone".into()))
        );
        // Only the runner of the destination's current leader epoch
        // checkpoints.
        let epoch = state.partition("out", 0).unwrap().leader_epoch;
        let from_epoch = |leader_epoch, offset| ControlRequest::CheckpointPipeline {
            name: "pipe".into(),
            positions: vec![(0, offset)],
            state: None,
            leader_epoch: Some(leader_epoch),
        };
        assert!(matches!(
            state.apply(&from_epoch(epoch - 1, 50)),
            Err(ControlError::InvalidPipeline(_))
        ));
        state.apply(&from_epoch(epoch, 40)).unwrap();
        assert_eq!(state.pipelines["pipe"].positions[&0], 40);
    }

    #[test]
    fn an_add_plugin_entry_carries_the_component_as_base64_and_reads_back() {
        let request = add("p", vec![0, 1, 2, 255]);
        let json = serde_json::to_string(&request).unwrap();
        assert!(json.contains("\"AAEC/w==\""), "{json}");
        assert_eq!(
            serde_json::from_str::<ControlRequest>(&json).unwrap(),
            request
        );
    }
}
