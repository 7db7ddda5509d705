//! Metadata and topic administration: `Metadata`, `CreateTopics`,
//! `DeleteTopics`, `DescribeConfigs`, over the same topic catalog as
//! `edgebus topic`.
//!
//! On a single node this node is the only broker, the leader and the only
//! in-sync replica of every partition; on a cluster node the metadata is the
//! control log's. Kafka topic configs map to edgebus settings:
//! `retention.ms`, `retention.bytes`, `max.message.bytes`,
//! `compression.type` (`producer`, `lz4`, `zstd`) and `cleanup.policy`
//! (`delete` only); any other config is refused with `INVALID_CONFIG`.

use edgebus_proto::batch::Compression;
use edgebus_proto::frame::TopicSpec;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::api::{Call, NODE_ID, str_bytes};
use super::error;
use super::listener::Door;
use crate::cmd;

/// Partitions of a topic created with `num_partitions` -1 (Kafka's
/// `num.partitions` default).
pub const DEFAULT_PARTITIONS: u32 = 1;
/// The largest partition count a Kafka client may create a topic with.
pub const MAX_PARTITIONS: u32 = 10_000;

/// Kafka's `ConfigResource.Type` of a topic.
const RESOURCE_TOPIC: i8 = 2;
/// … and of a broker.
const RESOURCE_BROKER: i8 = 4;
/// `DescribeConfigs` config source: set on the topic.
const SOURCE_TOPIC: i8 = 1;
/// `ConfigEntry.ConfigType` of a long, and of a string.
const TYPE_LONG: i8 = 5;
const TYPE_INT: i8 = 3;
const TYPE_STRING: i8 = 2;

/// `Metadata`: this broker, and the topics asked for (all of them when
/// the list is null, or empty at version 0). On a cluster node, every node
/// with a Kafka listener, and each partition's leader and replicas as the
/// control log has them.
pub fn metadata(door: &Door, call: &Call, request: MetadataRequest) -> MetadataResponse {
    if let Some(cluster) = &door.broker.cluster {
        return cluster_metadata(cluster, call, request);
    }
    let topics = &door.broker.topics;
    let specs: Vec<Result<TopicSpec, Option<String>>> = match asked(call, request) {
        None => topics.list().into_iter().map(Ok).collect(),
        Some(names) => names
            .into_iter()
            .map(|name| match name {
                Some(name) => topics.spec(&name).map_err(|_| Some(name)),
                None => Err(None),
            })
            .collect(),
    };
    let mut response = MetadataResponse::default();
    response.brokers = vec![
        MetadataResponseBroker::default()
            .with_node_id(BrokerId(NODE_ID))
            .with_host(str_bytes(call.advertised.0.clone()))
            .with_port(call.advertised.1),
    ];
    response.cluster_id = Some(StrBytes::from_static_str("edgebus"));
    response.controller_id = BrokerId(NODE_ID);
    response.topics = specs
        .into_iter()
        .map(|spec| match spec {
            Ok(spec) => topic_metadata(&spec),
            Err(Some(name)) => MetadataResponseTopic::default()
                .with_name(Some(TopicName(str_bytes(name))))
                .with_error_code(ResponseError::UnknownTopicOrPartition.code()),
            // Asked for by topic id, which this door does not hand out.
            Err(None) => MetadataResponseTopic::default()
                .with_error_code(ResponseError::UnknownTopicId.code()),
        })
        .collect();
    response
}

/// The names a `Metadata` request asks for, `None` for every topic.
fn asked(call: &Call, request: MetadataRequest) -> Option<Vec<Option<String>>> {
    match request.topics {
        None => None,
        Some(asked) if asked.is_empty() && call.version == 0 => None,
        Some(asked) => Some(
            asked
                .into_iter()
                .map(|t| t.name.map(|n| n.0.to_string()))
                .collect(),
        ),
    }
}

fn cluster_metadata(
    cluster: &crate::cluster::Cluster,
    call: &Call,
    request: MetadataRequest,
) -> MetadataResponse {
    let state = cluster.state();
    let id = |node: u64| BrokerId(i32::try_from(node).unwrap_or(-1));
    let mut response = MetadataResponse::default();
    response.brokers = cluster
        .kafka_brokers()
        .into_iter()
        .filter_map(|(node, address)| {
            let (host, port) = address.rsplit_once(':')?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            Some(
                MetadataResponseBroker::default()
                    .with_node_id(id(node))
                    .with_host(str_bytes(host))
                    .with_port(port.parse().ok()?),
            )
        })
        .collect();
    response.cluster_id = Some(StrBytes::from_static_str("edgebus"));
    response.controller_id = cluster.status().controller.map_or(BrokerId(-1), id);
    let names: Vec<Option<String>> =
        asked(call, request).unwrap_or_else(|| state.topics.keys().cloned().map(Some).collect());
    response.topics = names
        .into_iter()
        .map(|name| {
            let Some(name) = name else {
                return MetadataResponseTopic::default()
                    .with_error_code(ResponseError::UnknownTopicId.code());
            };
            let topic = MetadataResponseTopic::default()
                .with_name(Some(TopicName(str_bytes(name.clone()))));
            let Some(meta) = state.topics.get(&name) else {
                return topic.with_error_code(ResponseError::UnknownTopicOrPartition.code());
            };
            let partitions = meta
                .partitions
                .iter()
                .enumerate()
                .map(|(p, m)| {
                    let partition = MetadataResponsePartition::default()
                        .with_partition_index(p as i32)
                        .with_leader_id(m.leader.map_or(BrokerId(-1), id))
                        .with_leader_epoch(-1)
                        .with_replica_nodes(m.replicas.iter().map(|n| id(*n)).collect())
                        .with_isr_nodes(m.isr.iter().map(|n| id(*n)).collect());
                    match m.leader {
                        Some(_) => partition,
                        None => partition.with_error_code(ResponseError::LeaderNotAvailable.code()),
                    }
                })
                .collect();
            topic.with_partitions(partitions)
        })
        .collect();
    response
}

fn topic_metadata(spec: &TopicSpec) -> MetadataResponseTopic {
    let partitions = (0..spec.partitions)
        .map(|p| {
            MetadataResponsePartition::default()
                .with_partition_index(p as i32)
                .with_leader_id(BrokerId(NODE_ID))
                // No leader epochs: clients then skip the epoch checks
                // (OffsetForLeaderEpoch) this door does not serve.
                .with_leader_epoch(-1)
                .with_replica_nodes(vec![BrokerId(NODE_ID)])
                .with_isr_nodes(vec![BrokerId(NODE_ID)])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(spec.name.clone()))))
        .with_partitions(partitions)
}

/// Why a Kafka topic setting cannot be applied.
struct BadConfig(ResponseError, String);

/// The spec a `CreateTopics` entry asks for. A replication factor is -1
/// (the default) or at least 1, and only 1 on a single node (`cluster`
/// false); a cluster node passes it to the control log.
fn spec_of(
    topic: &create_topics_request::CreatableTopic,
    cluster: bool,
) -> Result<TopicSpec, BadConfig> {
    let name = topic.name.0.to_string();
    let partitions = match topic.num_partitions {
        -1 => DEFAULT_PARTITIONS,
        n if n >= 1 && n as u32 <= MAX_PARTITIONS => n as u32,
        n => {
            return Err(BadConfig(
                ResponseError::InvalidPartitions,
                format!("partitions must be 1..={MAX_PARTITIONS}, got {n}"),
            ));
        }
    };
    let factor = topic.replication_factor;
    let allowed = factor == -1 || factor == 1 || (cluster && factor > 1);
    if !allowed {
        let why = match cluster {
            true => format!("replication factor {factor}; use -1 or at least 1"),
            false => format!("replication factor {factor} on a single edgebus node; use 1 or -1"),
        };
        return Err(BadConfig(ResponseError::InvalidReplicationFactor, why));
    }
    if !topic.assignments.is_empty() {
        return Err(BadConfig(
            ResponseError::InvalidReplicaAssignment,
            "replica assignments are not supported on a single node".into(),
        ));
    }
    let mut spec = TopicSpec::new(name, partitions);
    for config in &topic.configs {
        let value = config.value.as_ref().map(|v| v.as_str()).unwrap_or("");
        apply_config(&mut spec, config.name.as_str(), value)?;
    }
    Ok(spec)
}

fn apply_config(spec: &mut TopicSpec, key: &str, value: &str) -> Result<(), BadConfig> {
    let invalid = |why: String| BadConfig(ResponseError::InvalidConfig, why);
    let number = |value: &str| -> Result<i64, BadConfig> {
        value
            .parse::<i64>()
            .map_err(|_| invalid(format!("{key} must be a number, got {value:?}")))
    };
    match key {
        "retention.ms" => spec.retention_ms = number(value)?,
        "retention.bytes" => spec.retention_bytes = number(value)?,
        "max.message.bytes" => {
            spec.max_message_bytes = u32::try_from(number(value)?)
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| invalid(format!("{key} must be 1..=2^32-1, got {value}")))?;
        }
        "compression.type" => {
            spec.compression = match value {
                "producer" => Compression::None,
                "lz4" => Compression::Lz4,
                "zstd" => Compression::Zstd,
                other => {
                    return Err(invalid(format!(
                        "compression.type {other:?} is not supported; use producer, lz4 or zstd"
                    )));
                }
            }
        }
        "cleanup.policy" if value == "delete" => {}
        "cleanup.policy" => {
            return Err(invalid(format!(
                "cleanup.policy {value:?} is not supported (compaction is not built); use delete"
            )));
        }
        other => return Err(invalid(format!("config {other:?} is not supported"))),
    }
    Ok(())
}

/// The Kafka configs of a topic, as (name, value, type).
fn configs_of(spec: &TopicSpec) -> [(&'static str, String, i8); 5] {
    let compression = match spec.compression {
        Compression::None => "producer",
        Compression::Lz4 => "lz4",
        Compression::Zstd => "zstd",
        Compression::Gzip => "gzip",
        Compression::Snappy => "snappy",
    };
    [
        ("retention.ms", spec.retention_ms.to_string(), TYPE_LONG),
        (
            "retention.bytes",
            spec.retention_bytes.to_string(),
            TYPE_LONG,
        ),
        (
            "max.message.bytes",
            spec.max_message_bytes.to_string(),
            TYPE_INT,
        ),
        ("compression.type", compression.to_owned(), TYPE_STRING),
        ("cleanup.policy", "delete".to_owned(), TYPE_STRING),
    ]
}

/// `CreateTopics`, through the same catalog as `edgebus topic create`.
pub async fn create_topics(
    door: &Door,
    call: &Call,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let mut response = CreateTopicsResponse::default();
    for topic in &request.topics {
        let mut result = CreatableTopicResult::default().with_name(topic.name.clone());
        let created = match spec_of(topic, door.broker.cluster.is_some()) {
            Err(BadConfig(e, why)) => Err((e.code(), why)),
            Ok(spec) if request.validate_only => Ok(spec),
            Ok(spec) => {
                // On a cluster node the topic goes through the control log
                // with the replication factor asked for (-1: the
                // cluster's default); a single node keeps ignoring it.
                let b = &door.broker;
                let replication_factor = match &b.cluster {
                    Some(_) => u32::try_from(topic.replication_factor).unwrap_or(0),
                    None => 0,
                };
                let cluster = b.cluster.as_ref();
                let name = spec.name.clone();
                match cmd::topic::create(
                    &b.topics,
                    cluster,
                    spec.clone(),
                    replication_factor,
                    0,
                    false,
                )
                .await
                {
                    Ok(_) => Ok(b.topics.spec(&name).unwrap_or(spec)),
                    Err(e) => Err((error::code(&e), e.to_string())),
                }
            }
        };
        match created {
            Ok(spec) => {
                result.num_partitions = spec.partitions as i32;
                result.replication_factor = door.broker.cluster.as_ref().map_or(1, |c| {
                    c.state()
                        .topics
                        .get(&spec.name)
                        .map_or(-1, |t| t.replication_factor as i16)
                });
                if call.version >= 5 {
                    result.configs = Some(
                        configs_of(&spec)
                            .into_iter()
                            .map(|(name, value, _)| {
                                CreatableTopicConfigs::default()
                                    .with_name(StrBytes::from_static_str(name))
                                    .with_value(Some(str_bytes(value)))
                                    .with_config_source(SOURCE_TOPIC)
                            })
                            .collect(),
                    );
                }
            }
            Err((code, why)) => {
                result.error_code = code;
                result.error_message = Some(str_bytes(why));
                result.num_partitions = -1;
                result.replication_factor = -1;
            }
        }
        response.topics.push(result);
    }
    response
}

/// `DeleteTopics`, refused as `edgebus topic delete` is (a topic a
/// pipeline uses stays).
pub async fn delete_topics(
    door: &Door,
    call: &Call,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let names: Vec<Option<String>> = if call.version >= 6 {
        request
            .topics
            .into_iter()
            .map(|t| t.name.map(|n| n.0.to_string()))
            .collect()
    } else {
        request
            .topic_names
            .into_iter()
            .map(|n| Some(n.0.to_string()))
            .collect()
    };
    let b = &door.broker;
    let mut response = DeleteTopicsResponse::default();
    for name in names {
        let mut result = DeletableTopicResult::default();
        match name {
            None => result.error_code = ResponseError::UnknownTopicId.code(),
            Some(name) => {
                result.name = Some(TopicName(str_bytes(name.clone())));
                let deleted = cmd::topic::delete(
                    &b.topics,
                    b.cluster.as_ref(),
                    &b.pipelines,
                    &b.attachments,
                    &b.dead_letters,
                    name,
                )
                .await;
                if let Err(e) = deleted {
                    result.error_code = error::code(&e);
                    result.error_message = Some(str_bytes(e.to_string()));
                }
            }
        }
        response.responses.push(result);
    }
    response
}

/// `DescribeConfigs`: a topic's settings as Kafka names them. A broker
/// resource is described with no entries (its settings are edgebus's,
/// not Kafka's).
pub fn describe_configs(door: &Door, request: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let mut response = DescribeConfigsResponse::default();
    for resource in request.resources {
        let mut result = DescribeConfigsResult::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name.clone());
        match resource.resource_type {
            RESOURCE_TOPIC => match door.broker.topics.spec(resource.resource_name.as_str()) {
                Ok(spec) => {
                    let wanted = |name: &str| {
                        resource
                            .configuration_keys
                            .as_ref()
                            .is_none_or(|keys| keys.iter().any(|k| k.as_str() == name))
                    };
                    result.configs = configs_of(&spec)
                        .into_iter()
                        .filter(|(name, _, _)| wanted(name))
                        .map(|(name, value, config_type)| {
                            DescribeConfigsResourceResult::default()
                                .with_name(StrBytes::from_static_str(name))
                                .with_value(Some(str_bytes(value)))
                                .with_config_source(SOURCE_TOPIC)
                                .with_config_type(config_type)
                        })
                        .collect();
                }
                Err(e) => {
                    result.error_code = error::code(&e);
                    result.error_message = Some(str_bytes(e.to_string()));
                }
            },
            RESOURCE_BROKER => {}
            other => {
                result.error_code = ResponseError::InvalidRequest.code();
                result.error_message = Some(str_bytes(format!(
                    "resource type {other} is not described by edgebus"
                )));
            }
        }
        response.results.push(result);
    }
    response
}
