//! The Kafka APIs this door speaks, at which versions, and how a request
//! frame becomes a handler call and a handler's answer a response frame.
//!
//! Every version listed here is one whose fields the handlers read and
//! fill; newer ones are left out rather than half-served. Topic ids
//! (Fetch 13+, Produce 13+) are not offered, so clients name topics.
//! Anything else (an API key that is not listed, or a version outside its
//! range) is answered with `UNSUPPORTED_VERSION`: an `ApiVersions` of an
//! unknown version gets the version-0 answer Kafka's clients expect, with
//! the list of what is supported; any other request gets its correlation
//! id and the error code.

use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::{admin, fetch, group, produce};
use crate::kafka::listener::Door;

/// The node id of this broker in Metadata and FindCoordinator answers.
pub const NODE_ID: i32 = 0;

/// `(API, lowest version, highest version)` this door serves.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 12),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 8),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::FindCoordinator, 0, 5),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::DescribeConfigs, 1, 4),
];

/// Whether this door serves `api` at `version`.
pub fn supports(api: ApiKey, version: i16) -> bool {
    SUPPORTED
        .iter()
        .any(|&(k, min, max)| k == api && (min..=max).contains(&version))
}

/// Why a request frame could not be served; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame does not decode as the request its header names.
    #[error("malformed {api:?} v{version} request: {detail}")]
    Malformed {
        /// The API the header names.
        api: ApiKey,
        /// Its version.
        version: i16,
        /// What the decoder said.
        detail: String,
    },
    /// The frame is too short for a request header.
    #[error("request frame of {0} bytes is shorter than a request header")]
    TooShort(usize),
    /// The handler task failed (a bug: logged, and the connection closed).
    #[error("request handler failed: {0}")]
    Handler(String),
    /// A response could not be encoded (a bug: logged, and the client
    /// reconnects rather than wait for an answer that will not come).
    #[error("encoding the {api:?} v{version} response: {detail}")]
    Encode {
        /// The API.
        api: ApiKey,
        /// Its version.
        version: i16,
        /// What the encoder said.
        detail: String,
    },
}

/// One request's identity: what every answer to it needs.
#[derive(Debug, Clone)]
pub struct Call {
    /// The API.
    pub api: ApiKey,
    /// Its version.
    pub version: i16,
    /// Echoed in the response.
    pub correlation_id: i32,
    /// The client's id, for group member descriptions.
    pub client_id: String,
    /// The client's address.
    pub peer: SocketAddr,
    /// The host and port this broker tells the client to use.
    pub advertised: (String, i32),
}

impl Call {
    /// The response frame (length prefix included) for `body`.
    pub fn respond<R: Encodable>(&self, body: &R) -> Result<Bytes, FrameError> {
        let encode_error = |e: anyhow::Error| FrameError::Encode {
            api: self.api,
            version: self.version,
            detail: e.to_string(),
        };
        let mut buf = BytesMut::with_capacity(64);
        buf.put_i32(0);
        let header = ResponseHeader::default().with_correlation_id(self.correlation_id);
        header
            .encode(&mut buf, self.api.response_header_version(self.version))
            .map_err(encode_error)?;
        body.encode(&mut buf, self.version).map_err(encode_error)?;
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        Ok(buf.freeze())
    }
}

/// The fixed start of every request header: API key, version and
/// correlation id, readable before anything else is decoded.
#[derive(Debug, Clone, Copy)]
pub struct Prefix {
    /// The raw API key.
    pub api_key: i16,
    /// The raw version.
    pub version: i16,
    /// The correlation id.
    pub correlation_id: i32,
}

impl Prefix {
    /// Reads the prefix of a request frame (without its length).
    pub fn parse(frame: &[u8]) -> Result<Prefix, FrameError> {
        if frame.len() < 8 {
            return Err(FrameError::TooShort(frame.len()));
        }
        Ok(Prefix {
            api_key: i16::from_be_bytes([frame[0], frame[1]]),
            version: i16::from_be_bytes([frame[2], frame[3]]),
            correlation_id: i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]),
        })
    }
}

/// A decoded request this door serves.
#[derive(Debug)]
#[allow(missing_docs)]
pub enum Request {
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    Metadata(MetadataRequest),
    OffsetCommit(OffsetCommitRequest),
    OffsetFetch(OffsetFetchRequest),
    FindCoordinator(FindCoordinatorRequest),
    JoinGroup(JoinGroupRequest),
    Heartbeat(HeartbeatRequest),
    LeaveGroup(LeaveGroupRequest),
    SyncGroup(SyncGroupRequest),
    DescribeGroups(DescribeGroupsRequest),
    ListGroups(ListGroupsRequest),
    ApiVersions(ApiVersionsRequest),
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
    InitProducerId(InitProducerIdRequest),
    DescribeConfigs(DescribeConfigsRequest),
}

/// What a frame is, once its header is read.
pub enum Framed {
    /// A request this door serves, and who sent it.
    Request(Box<(Call, Request)>),
    /// An API or version this door does not serve: the answer to send.
    Unsupported(Bytes),
}

/// Decodes a request frame (without its length prefix).
pub fn decode(
    mut frame: Bytes,
    peer: SocketAddr,
    advertised: (String, i32),
) -> Result<Framed, FrameError> {
    let prefix = Prefix::parse(&frame)?;
    let Ok(api) = ApiKey::try_from(prefix.api_key) else {
        return Ok(Framed::Unsupported(unsupported(prefix)));
    };
    if !supports(api, prefix.version) {
        return Ok(Framed::Unsupported(unsupported(prefix)));
    }
    let version = prefix.version;
    let malformed = |e: anyhow::Error| FrameError::Malformed {
        api,
        version,
        detail: e.to_string(),
    };
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
        .map_err(malformed)?;
    let call = Call {
        api,
        version,
        correlation_id: prefix.correlation_id,
        client_id: header
            .client_id
            .map(|c| c.as_str().to_owned())
            .unwrap_or_default(),
        peer,
        advertised,
    };
    let body = &mut frame;
    let request = match api {
        ApiKey::Produce => Request::Produce(Decodable::decode(body, version).map_err(malformed)?),
        ApiKey::Fetch => Request::Fetch(Decodable::decode(body, version).map_err(malformed)?),
        ApiKey::ListOffsets => {
            Request::ListOffsets(Decodable::decode(body, version).map_err(malformed)?)
        }
        ApiKey::Metadata => Request::Metadata(Decodable::decode(body, version).map_err(malformed)?),
        ApiKey::OffsetCommit => {
            Request::OffsetCommit(Decodable::decode(body, version).map_err(malformed)?)
        }
        ApiKey::OffsetFetch => {
            Request::OffsetFetch(Decodable::decode(body, version).map_err(malformed)?)
        }
        ApiKey::FindCoordinator => {
            Request::FindCoordinator(Decodable::decode(body, version).map_err(malformed)?)
        }
        ApiKey::JoinGroup => {
            Request::JoinGroup(Decodable::decode(body, version).map_err(malformed)?)
        }
        ApiKey::Heartbeat => {
            Request::Heartbeat(Decodable::decode(body, version).map_err(malformed)?)
        }
        ApiKey::LeaveGroup => {
            Request::LeaveGroup(Decodable::decode(body, version).map_err(malformed)?)
        }
        ApiKey::SyncGroup => {
            Request::SyncGroup(Decodable::decode(body, version).map_err(malformed)?)
        }
        ApiKey::DescribeGroups => {
            Request::DescribeGroups(Decodable::decode(body, version).map_err(malformed)?)
        }
        ApiKey::ListGroups => {
            Request::ListGroups(Decodable::decode(body, version).map_err(malformed)?)
        }
        ApiKey::ApiVersions => {
            Request::ApiVersions(Decodable::decode(body, version).map_err(malformed)?)
        }
        ApiKey::CreateTopics => {
            Request::CreateTopics(Decodable::decode(body, version).map_err(malformed)?)
        }
        ApiKey::DeleteTopics => {
            Request::DeleteTopics(Decodable::decode(body, version).map_err(malformed)?)
        }
        ApiKey::InitProducerId => {
            Request::InitProducerId(Decodable::decode(body, version).map_err(malformed)?)
        }
        ApiKey::DescribeConfigs => {
            Request::DescribeConfigs(Decodable::decode(body, version).map_err(malformed)?)
        }
        _ => return Ok(Framed::Unsupported(unsupported(prefix))),
    };
    Ok(Framed::Request(Box::new((call, request))))
}

/// The answer to an API or version this door does not serve.
fn unsupported(prefix: Prefix) -> Bytes {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(0);
    buf.put_i32(prefix.correlation_id);
    if prefix.api_key == ApiKey::ApiVersions as i16 {
        // What Kafka brokers answer, so a client that asked too new a
        // version retries with one from the list.
        let mut body = versions();
        body.error_code = ResponseError::UnsupportedVersion.code();
        body.encode(&mut buf, 0)
            .expect("a version-0 ApiVersions response always encodes");
    } else {
        buf.put_i16(ResponseError::UnsupportedVersion.code());
    }
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

/// The ApiVersions answer.
fn versions() -> ApiVersionsResponse {
    let mut response = ApiVersionsResponse::default();
    response.api_keys = SUPPORTED
        .iter()
        .map(|&(api, min, max)| {
            ApiVersion::default()
                .with_api_key(api as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect();
    response
}

/// A string for a response field.
pub fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// Serves one decoded request; `None` when it gets no answer (a Produce
/// with acks=0). The listener accepts Produce requests itself, in order,
/// and waits for their acks apart (see [`produce::accept`]).
pub async fn dispatch(
    door: &Door,
    call: &Call,
    request: Request,
) -> Result<Option<Bytes>, FrameError> {
    let answer = match request {
        Request::Produce(r) => return produce::accept(door, call, r).await.await,
        Request::ApiVersions(_) => call.respond(&versions()),
        Request::Metadata(r) => call.respond(&admin::metadata(door, call, r)),
        Request::CreateTopics(r) => call.respond(&admin::create_topics(door, call, r).await),
        Request::DeleteTopics(r) => call.respond(&admin::delete_topics(door, call, r).await),
        Request::DescribeConfigs(r) => call.respond(&admin::describe_configs(door, r)),
        Request::InitProducerId(r) => call.respond(&produce::init_producer_id(door, r).await),
        Request::Fetch(r) => call.respond(&fetch::fetch(door, r).await),
        Request::ListOffsets(r) => call.respond(&fetch::list_offsets(door, r).await),
        Request::FindCoordinator(r) => call.respond(&group::find_coordinator(door, call, r)),
        Request::JoinGroup(r) => call.respond(&group::join(door, call, r).await),
        Request::SyncGroup(r) => call.respond(&group::sync(door, r).await),
        Request::Heartbeat(r) => call.respond(&group::heartbeat(door, r)),
        Request::LeaveGroup(r) => call.respond(&group::leave(door, r)),
        Request::OffsetCommit(r) => call.respond(&group::offset_commit(door, r).await),
        Request::OffsetFetch(r) => call.respond(&group::offset_fetch(door, call, r).await),
        Request::ListGroups(r) => call.respond(&group::list_groups(door, r).await),
        Request::DescribeGroups(r) => call.respond(&group::describe_groups(door, r).await),
    };
    answer.map(Some)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    proptest! {
        /// Any bytes after a header naming a served API and version decode
        /// to a request or an error: never a panic, never an allocation
        /// sized by a count the frame cannot hold.
        #[test]
        fn decode_never_panics(
            entry in 0..SUPPORTED.len(),
            version_offset in 0i16..20,
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let (api, min, max) = SUPPORTED[entry];
            let version = min + version_offset % (max - min + 1);
            let mut frame = BytesMut::new();
            frame.put_i16(api as i16);
            frame.put_i16(version);
            frame.put_i32(1);
            frame.extend_from_slice(&body);
            let _ = decode(frame.freeze(), peer(), ("localhost".into(), 9092));
        }

        /// Arbitrary frames, header included.
        #[test]
        fn decode_never_panics_on_any_frame(frame in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode(Bytes::from(frame), peer(), ("localhost".into(), 9092));
        }
    }

    /// An API key no Kafka version has is answered with its correlation
    /// id and UNSUPPORTED_VERSION.
    #[test]
    fn unknown_api_key_is_answered_unsupported_version() {
        let mut frame = BytesMut::new();
        frame.put_i16(999);
        frame.put_i16(0);
        frame.put_i32(42);
        let Ok(Framed::Unsupported(answer)) = decode(frame.freeze(), peer(), ("h".into(), 1))
        else {
            panic!("an answer expected");
        };
        assert_eq!(&answer[..], &[0, 0, 0, 6, 0, 0, 0, 42, 0, 35]);
    }
}
