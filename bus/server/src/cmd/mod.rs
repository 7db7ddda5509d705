//! What each request does: one handler per request kind or small family,
//! each given only the parts of the broker it touches.
//!
//! [`dispatch`] is the edge of request/response streams: it hands a request
//! to its handler and turns the handler's error into `Response::Error`.
//! `Produce` and `Subscribe` are stream-shaped and reach
//! [`produce::produce`] and [`crate::feed`] from [`crate::server`] instead.

pub mod fetch;
pub mod group;
pub mod mirror;
pub mod node;
pub mod pipeline;
pub mod plugin;
pub mod produce;
pub mod topic;

use edgebus_proto::ErrorCode;
use edgebus_proto::frame::{Request, Response};

use crate::broker::Broker;
use crate::error::{self, Coded};

/// A stream request arrived where a single answer was expected.
#[derive(Debug, thiserror::Error)]
#[error("produce and subscribe are stream requests")]
pub struct StreamRequest;

impl Coded for StreamRequest {
    fn code(&self) -> ErrorCode {
        ErrorCode::InvalidRequest
    }
}

/// The response to one request: its handler's, or the handler's error.
pub fn respond<E: Coded>(handled: Result<Response, E>) -> Response {
    handled.unwrap_or_else(|e| error::response(&e))
}

/// Answers every request except `Produce` and `Subscribe`.
pub async fn dispatch(b: &Broker, request: Request) -> Response {
    if let Some(refusal) = group::coordinated_group(&request).and_then(|g| group::elsewhere(b, g)) {
        return refusal;
    }
    match request {
        Request::CreateTopic(spec) => {
            respond(topic::create(&b.topics, b.cluster.as_ref(), spec, 0, 0, false).await)
        }
        Request::CreateReplicatedTopic {
            spec,
            replication_factor,
            min_insync_replicas,
            unclean_leader_election,
        } => respond(
            topic::create(
                &b.topics,
                b.cluster.as_ref(),
                spec,
                replication_factor,
                min_insync_replicas,
                unclean_leader_election,
            )
            .await,
        ),
        Request::PartitionStates { topic } => node::partition_states(b, &topic),
        Request::DeleteTopic { name } => respond(
            topic::delete(
                &b.topics,
                b.cluster.as_ref(),
                &b.pipelines,
                &b.attachments,
                &b.dead_letters,
                name,
            )
            .await,
        ),
        Request::ListTopics => topic::list(&b.topics),
        Request::DescribeTopic { name } => {
            respond(topic::describe(&b.topics, &b.reader, &name).await)
        }
        Request::InitProducer => {
            let node = b.cluster.as_ref().map(|c| c.node());
            respond(produce::init_producer(&b.store, node).await)
        }
        Request::Fetch {
            topic,
            partition,
            from,
            max_bytes,
        } => respond(fetch::fetch(&b.reader, &topic, partition, from, max_bytes).await),
        Request::ListOffsets {
            topic,
            partition,
            position,
        } => respond(fetch::list_offsets(&b.reader, &topic, partition, position).await),
        Request::JoinGroup {
            group,
            member_id,
            topics,
            session_timeout_ms,
            strategy,
        } => respond(group::join(
            &b.groups,
            &group,
            &member_id,
            &topics,
            session_timeout_ms,
            strategy,
        )),
        Request::Heartbeat {
            group,
            member_id,
            owned,
            wait_ms,
        } => respond(group::heartbeat(&b.groups, &group, &member_id, owned, wait_ms).await),
        Request::LeaveGroup { group, member_id } => {
            respond(group::leave(&b.groups, &group, &member_id))
        }
        Request::CommitOffsets {
            group,
            member_id,
            epoch,
            offsets,
        } => respond(group::commit(&b.groups, &group, &member_id, epoch, offsets).await),
        Request::FetchOffsets { group } => respond(group::fetch_offsets(&b.groups, group).await),
        Request::FindCoordinator { group } => group::find_coordinator(b, &group),
        Request::ListGroups => respond(group::list(&b.groups).await),
        Request::DescribeGroup { group } => respond(group::describe(&b.groups, group).await),
        Request::ResetOffsets { group, topic, to } => {
            respond(group::reset(&b.groups, &b.topics, &b.reader, &group, &topic, to).await)
        }
        Request::DeleteGroup { group } => respond(group::delete(&b.groups, group).await),
        Request::PluginAdd { name, wasm } => respond(plugin::add(&b.registry, name, wasm).await),
        Request::PluginList => {
            respond(plugin::list(&b.registry, &b.attachments, &b.pipelines, None).await)
        }
        Request::PluginDescribe { name } => {
            respond(plugin::list(&b.registry, &b.attachments, &b.pipelines, Some(name)).await)
        }
        Request::PluginRemove { name } => {
            respond(plugin::remove(&b.registry, &b.attachments, &b.pipelines, name).await)
        }
        Request::SetIngest {
            topic,
            chain,
            on_failure,
        } => {
            respond(plugin::set_ingest(&b.topics, &b.attachments, &topic, chain, on_failure).await)
        }
        Request::TopicPlugins { topic } => {
            respond(plugin::topic_plugins(&b.topics, &b.attachments, &topic))
        }
        Request::PipelineCreate {
            name,
            from,
            to,
            chain,
            on_failure,
        } => respond(pipeline::create(&b.pipelines, &name, &from, &to, chain, on_failure).await),
        Request::PipelineList => respond(pipeline::describe(&b.pipelines, None)),
        Request::PipelineDescribe { name } => {
            respond(pipeline::describe(&b.pipelines, Some(&name)))
        }
        Request::PipelineDelete { name } => respond(pipeline::delete(&b.pipelines, &name).await),
        Request::NodeInfo => node::info(&b.node).await,
        Request::ClusterStatus => node::cluster_status(b.cluster.as_ref()),
        Request::AlterTopic { name, changes } => {
            respond(topic::alter(&b.topics, b.cluster.as_ref(), &name, changes).await)
        }
        Request::ResetPartitionOffsets {
            group,
            topic,
            partition,
            to,
            dry_run,
        } => {
            let plan = group::ResetPlan {
                group: &group,
                topic: &topic,
                partition,
                to,
                dry_run,
            };
            respond(group::reset_offsets(&b.groups, &b.topics, &b.reader, plan).await)
        }
        Request::MirrorOpen {
            mirror,
            topic,
            partitions,
            filtered,
        } => {
            let in_cluster = b.cluster.is_some();
            let open = mirror::open(
                &b.topics, &b.writer, in_cluster, mirror, topic, partitions, filtered,
            );
            respond(open.await)
        }
        Request::MirrorCommit {
            mirror,
            topic,
            partition,
            source_from,
            source_to,
            compression,
            payload,
        } => {
            let c = crate::writer::MirrorCommit {
                mirror,
                topic,
                partition,
                source_from,
                source_to,
                batches: Vec::new(),
            };
            respond(mirror::commit(&b.writer, c, compression, payload).await)
        }
        Request::MirrorAppend {
            mirror,
            topic,
            partition,
            base_offset,
            compression,
            payload,
        } => respond(
            mirror::append(
                &b.writer,
                mirror,
                topic,
                partition,
                base_offset,
                compression,
                payload,
            )
            .await,
        ),
        Request::MirrorSkip {
            mirror,
            topic,
            partition,
            from,
            to,
        } => {
            let s = crate::writer::MirrorSkip {
                mirror,
                topic,
                partition,
                from,
                to,
            };
            respond(mirror::skip(&b.writer, s).await)
        }
        Request::MirrorCreate(spec) => respond(b.mirrors.create(spec).await),
        Request::MirrorList => respond(b.mirrors.describe(None).await),
        Request::MirrorDescribe { name } => respond(b.mirrors.describe(Some(&name)).await),
        Request::MirrorPause { name } => respond(b.mirrors.set_paused(&name, true).await),
        Request::MirrorResume { name } => respond(b.mirrors.set_paused(&name, false).await),
        Request::MirrorDelete { name } => respond(b.mirrors.delete(&name).await),
        Request::Produce { .. } | Request::Subscribe { .. } => error::response(&StreamRequest),
    }
}
