//! MQTT packets as the session sees them, whatever the protocol version.
//!
//! The bytes are rumqttc's `mqttbytes` codecs' business (`v4` for MQTT
//! 3.1.1, `v5` for 5.0); this module only picks the codec by the version a
//! connection's CONNECT named and converts to and from one set of types,
//! so the session state machine is written once.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::{self as m4, v4};
use rumqttc::v5::mqttbytes::{self as m5mod, v5 as m5};

/// The protocol a connection speaks, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

/// Quality of service of a publish or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum QoS {
    /// At most once.
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

/// A will message from a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Its MQTT topic.
    pub topic: String,
    /// Its payload.
    pub payload: Bytes,
    /// The QoS it was given (it is stored like a publish of that QoS).
    pub qos: QoS,
    /// MQTT 5 user properties.
    pub user_properties: Vec<(String, String)>,
}

/// A CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol version.
    pub version: Version,
    /// Client identifier; empty asks the broker to assign one.
    pub client_id: String,
    /// Clean session (3.1.1) or clean start (5.0).
    pub clean: bool,
    /// Keep-alive in seconds; 0 turns it off.
    pub keep_alive_s: u16,
    /// MQTT 5 session expiry interval in seconds (absent: 0).
    pub session_expiry_s: Option<u32>,
    /// The will message.
    pub will: Option<Will>,
    /// Username and password.
    pub login: Option<(String, String)>,
}

/// A PUBLISH, in either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// MQTT topic name.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: QoS,
    /// Packet id (0 for QoS 0).
    pub pkid: u16,
    /// Redelivery flag.
    pub dup: bool,
    /// Retain flag.
    pub retain: bool,
    /// MQTT 5 user properties (always empty on 3.1.1).
    pub user_properties: Vec<(String, String)>,
    /// MQTT 5 topic alias, which this broker does not grant.
    pub topic_alias: Option<u16>,
}

/// A packet a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// CONNECT.
    Connect(Box<Connect>),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK for a QoS 1 delivery.
    PubAck(u16),
    /// PUBREC for a QoS 2 delivery (this broker delivers at most QoS 1).
    PubRec(u16),
    /// PUBREL of a QoS 2 publish.
    PubRel(u16),
    /// PUBCOMP (this broker never sends PUBREL, so none is expected).
    PubComp(u16),
    /// SUBSCRIBE: packet id and (filter, maximum QoS) pairs.
    Subscribe {
        /// Packet id.
        pkid: u16,
        /// Filters and the QoS asked for each.
        filters: Vec<(String, QoS)>,
    },
    /// UNSUBSCRIBE.
    Unsubscribe {
        /// Packet id.
        pkid: u16,
        /// Filters.
        filters: Vec<String>,
    },
    /// PINGREQ.
    PingReq,
    /// DISCONNECT; `with_will` is MQTT 5's "disconnect with will message".
    Disconnect {
        /// The client asked for its will to be published anyway.
        with_will: bool,
    },
    /// Any packet only a server sends (CONNACK, SUBACK, …) or AUTH, which
    /// this broker does not support.
    Unexpected(&'static str),
}

/// Why a CONNECT was refused, with its code in either version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A protocol level other than 4 or 5.
    UnsupportedVersion,
    /// The client id is not acceptable.
    BadClientId,
    /// Wrong username or password.
    BadCredentials,
    /// Not allowed to connect (anonymous where that is off, say).
    NotAuthorized,
    /// `mqtt.max_clients` are connected.
    ServerBusy,
    /// The broker is stopping or cannot reach its store.
    Unavailable,
}

/// How a DISCONNECT sent by the broker explains itself (MQTT 5 only; a
/// 3.1.1 connection is just closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goodbye {
    /// A packet could not be decoded.
    MalformedPacket,
    /// A packet broke the protocol (a second CONNECT, say).
    ProtocolError,
    /// A QoS 0 publish to a topic no mapping covers.
    TopicNameInvalid,
    /// A packet over `mqtt.max_packet_bytes`.
    PacketTooLarge,
    /// More QoS 1/2 publishes unacknowledged than the receive maximum.
    ReceiveMaximumExceeded,
    /// Nothing heard within 1.5 keep-alive periods.
    KeepAliveTimeout,
    /// Another connection took over the client id.
    SessionTakenOver,
    /// The broker is stopping.
    ShuttingDown,
    /// A topic alias, which this broker never granted.
    TopicAliasInvalid,
}

impl Goodbye {
    /// The reason string an MQTT 5 DISCONNECT carries.
    pub fn reason(self) -> &'static str {
        match self {
            Goodbye::MalformedPacket => "malformed packet",
            Goodbye::ProtocolError => "protocol error",
            Goodbye::TopicNameInvalid => "no mapping covers this topic",
            Goodbye::PacketTooLarge => "packet over mqtt.max_packet_bytes",
            Goodbye::ReceiveMaximumExceeded => "over mqtt.max_inflight_per_client",
            Goodbye::KeepAliveTimeout => "keep-alive timeout",
            Goodbye::SessionTakenOver => "session taken over",
            Goodbye::ShuttingDown => "broker shutting down",
            Goodbye::TopicAliasInvalid => "topic aliases are not supported",
        }
    }
}

/// How the broker answers a QoS 1 or 2 publish it did not store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishRefusal {
    /// No mapping covers the topic.
    TopicNameInvalid,
    /// The record could not be stored (too large, refused by a plugin, …).
    Unspecified,
    /// A QoS 2 packet id still awaiting its PUBREL, reused for another
    /// message.
    PacketIdInUse,
}

/// A packet the broker sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// CONNACK accepting the connection.
    ConnAck {
        /// A stored session was resumed.
        session_present: bool,
        /// MQTT 5: the client id the broker chose for an empty one.
        assigned_client_id: Option<String>,
        /// MQTT 5: the receive maximum (QoS 1/2 publishes in flight).
        receive_max: u16,
        /// MQTT 5: the largest packet the broker accepts.
        max_packet_bytes: u32,
    },
    /// CONNACK refusing the connection.
    ConnRefused(Refusal),
    /// PUBACK; `None` is success.
    PubAck(u16, Option<PublishRefusal>),
    /// PUBREC; `None` is success.
    PubRec(u16, Option<PublishRefusal>),
    /// PUBCOMP.
    PubComp(u16),
    /// SUBACK: the QoS granted per filter, `None` for a refused filter.
    SubAck(u16, Vec<Option<QoS>>),
    /// UNSUBACK for so many filters.
    UnsubAck(u16, usize),
    /// PINGRESP.
    PingResp,
    /// A delivery.
    Publish(Publish),
    /// DISCONNECT (MQTT 5; nothing is written on 3.1.1).
    Disconnect(Goodbye),
}

/// Why bytes did not make a packet.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The packet is longer than the limit; the connection cannot go on.
    #[error("packet of {len} bytes exceeds max_packet_bytes {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The first packet was not a CONNECT.
    #[error("the first packet must be CONNECT")]
    NotConnect,
    /// A CONNECT naming a protocol level other than 4 (3.1.1) or 5.
    #[error("unsupported MQTT protocol level {0}")]
    UnsupportedVersion(u8),
    /// The codec refused the bytes.
    #[error("malformed packet: {0}")]
    Malformed(String),
}

/// Why a packet could not be encoded (it is over the client's limit).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode packet: {0}")]
pub struct EncodeError(String);

/// Bytes of a packet with a remaining length of 0: its type byte and
/// the one length byte.
const EMPTY_PACKET_BYTES: usize = 2;

/// Takes the next whole packet off the front of `buf`. `Ok(None)`: more
/// bytes are needed. `version` is `None` until the CONNECT is read, which
/// must come first. Never panics, whatever `buf` holds.
pub fn decode(
    buf: &mut BytesMut,
    version: Option<Version>,
    max_bytes: usize,
) -> Result<Option<Inbound>, DecodeError> {
    // Frame with the 3.1.1 codec: the fixed header is the same in both
    // versions, and it checks the length before anything is buffered.
    let header = match m4::check(buf.iter(), max_bytes) {
        Ok(h) => h,
        Err(m4::Error::InsufficientBytes(_)) => return Ok(None),
        Err(m4::Error::PayloadSizeLimitExceeded(len)) => {
            return Err(DecodeError::TooLarge {
                len,
                max: max_bytes,
            });
        }
        Err(e) => return Err(DecodeError::Malformed(e.to_string())),
    };
    let kind = header.packet_type();
    let Some(version) = version else {
        if !matches!(kind, Ok(m4::PacketType::Connect)) {
            return Err(DecodeError::NotConnect);
        }
        let mut packet = buf.split_to(header.frame_length());
        return decode_connect(&mut packet).map(Some);
    };
    let mut packet = buf.split_to(header.frame_length());
    match version {
        Version::V311 => v4::Packet::read(&mut packet, max_bytes)
            .map(from_v4)
            .map(Some)
            .map_err(|e| DecodeError::Malformed(e.to_string())),
        Version::V5 => {
            // MQTT 5 allows a DISCONNECT with no reason code at all (a
            // normal disconnection), which the v5 codec refuses as
            // "payload required" before its own DISCONNECT reader, which
            // handles it, runs.
            if matches!(kind, Ok(m4::PacketType::Disconnect))
                && header.frame_length() == EMPTY_PACKET_BYTES
            {
                return Ok(Some(Inbound::Disconnect { with_will: false }));
            }
            m5::Packet::read(&mut packet, Some(max_bytes as u32))
                .map(from_v5)
                .map(Some)
                .map_err(|e| DecodeError::Malformed(e.to_string()))
        }
    }
}

/// A CONNECT in whichever version it names: the v5 codec refuses any
/// level but 5 with the level it found, and the v4 codec then reads 4.
fn decode_connect(packet: &mut BytesMut) -> Result<Inbound, DecodeError> {
    let mut copy = packet.clone();
    match m5::Packet::read(&mut copy, None) {
        Ok(p) => return Ok(from_v5(p)),
        Err(m5mod::Error::InvalidProtocolLevel(4)) => {}
        Err(m5mod::Error::InvalidProtocolLevel(level)) => {
            return Err(DecodeError::UnsupportedVersion(level));
        }
        Err(e) => return Err(DecodeError::Malformed(e.to_string())),
    }
    v4::Packet::read(packet, usize::MAX)
        .map(from_v4)
        .map_err(|e| DecodeError::Malformed(e.to_string()))
}

fn qos4(q: m4::QoS) -> QoS {
    match q {
        m4::QoS::AtMostOnce => QoS::AtMostOnce,
        m4::QoS::AtLeastOnce => QoS::AtLeastOnce,
        m4::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos5(q: m5mod::QoS) -> QoS {
    match q {
        m5mod::QoS::AtMostOnce => QoS::AtMostOnce,
        m5mod::QoS::AtLeastOnce => QoS::AtLeastOnce,
        m5mod::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn to_qos4(q: QoS) -> m4::QoS {
    match q {
        QoS::AtMostOnce => m4::QoS::AtMostOnce,
        QoS::AtLeastOnce => m4::QoS::AtLeastOnce,
        QoS::ExactlyOnce => m4::QoS::ExactlyOnce,
    }
}

fn to_qos5(q: QoS) -> m5mod::QoS {
    match q {
        QoS::AtMostOnce => m5mod::QoS::AtMostOnce,
        QoS::AtLeastOnce => m5mod::QoS::AtLeastOnce,
        QoS::ExactlyOnce => m5mod::QoS::ExactlyOnce,
    }
}

fn from_v4(p: v4::Packet) -> Inbound {
    match p {
        v4::Packet::Connect(c) => Inbound::Connect(Box::new(Connect {
            version: Version::V311,
            client_id: c.client_id,
            clean: c.clean_session,
            keep_alive_s: c.keep_alive,
            session_expiry_s: None,
            will: c.last_will.map(|w| Will {
                topic: w.topic,
                payload: w.message,
                qos: qos4(w.qos),
                user_properties: Vec::new(),
            }),
            login: c.login.map(|l| (l.username, l.password)),
        })),
        v4::Packet::Publish(p) => Inbound::Publish(Publish {
            topic: p.topic,
            payload: p.payload,
            qos: qos4(p.qos),
            pkid: p.pkid,
            dup: p.dup,
            retain: p.retain,
            user_properties: Vec::new(),
            topic_alias: None,
        }),
        v4::Packet::PubAck(a) => Inbound::PubAck(a.pkid),
        v4::Packet::PubRec(a) => Inbound::PubRec(a.pkid),
        v4::Packet::PubRel(a) => Inbound::PubRel(a.pkid),
        v4::Packet::PubComp(a) => Inbound::PubComp(a.pkid),
        v4::Packet::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| (f.path, qos4(f.qos)))
                .collect(),
        },
        v4::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
        },
        v4::Packet::PingReq => Inbound::PingReq,
        v4::Packet::Disconnect => Inbound::Disconnect { with_will: false },
        v4::Packet::ConnAck(_) => Inbound::Unexpected("CONNACK"),
        v4::Packet::SubAck(_) => Inbound::Unexpected("SUBACK"),
        v4::Packet::UnsubAck(_) => Inbound::Unexpected("UNSUBACK"),
        v4::Packet::PingResp => Inbound::Unexpected("PINGRESP"),
    }
}

fn from_v5(p: m5::Packet) -> Inbound {
    match p {
        m5::Packet::Connect(c, will, login) => Inbound::Connect(Box::new(Connect {
            version: Version::V5,
            client_id: c.client_id,
            clean: c.clean_start,
            keep_alive_s: c.keep_alive,
            session_expiry_s: c.properties.and_then(|p| p.session_expiry_interval),
            will: will.map(|w| Will {
                topic: String::from_utf8_lossy(&w.topic).into_owned(),
                payload: w.message,
                qos: qos5(w.qos),
                user_properties: w.properties.map(|p| p.user_properties).unwrap_or_default(),
            }),
            login: login.map(|l| (l.username, l.password)),
        })),
        m5::Packet::Publish(p) => {
            let (user_properties, topic_alias) = p
                .properties
                .map(|props| (props.user_properties, props.topic_alias))
                .unwrap_or_default();
            Inbound::Publish(Publish {
                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                payload: p.payload,
                qos: qos5(p.qos),
                pkid: p.pkid,
                dup: p.dup,
                retain: p.retain,
                user_properties,
                topic_alias,
            })
        }
        m5::Packet::PubAck(a) => Inbound::PubAck(a.pkid),
        m5::Packet::PubRec(a) => Inbound::PubRec(a.pkid),
        m5::Packet::PubRel(a) => Inbound::PubRel(a.pkid),
        m5::Packet::PubComp(a) => Inbound::PubComp(a.pkid),
        m5::Packet::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| (f.path, qos5(f.qos)))
                .collect(),
        },
        m5::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
            pkid: u.pkid,
            filters: u.filters,
        },
        m5::Packet::PingReq(_) => Inbound::PingReq,
        m5::Packet::Disconnect(d) => Inbound::Disconnect {
            with_will: d.reason_code == m5::DisconnectReasonCode::DisconnectWithWillMessage,
        },
        m5::Packet::Auth(_) => Inbound::Unexpected("AUTH"),
        m5::Packet::ConnAck(_) => Inbound::Unexpected("CONNACK"),
        m5::Packet::SubAck(_) => Inbound::Unexpected("SUBACK"),
        m5::Packet::UnsubAck(_) => Inbound::Unexpected("UNSUBACK"),
        m5::Packet::PingResp(_) => Inbound::Unexpected("PINGRESP"),
    }
}

/// Appends `packet` to `buf` in `version`'s encoding. A DISCONNECT on
/// 3.1.1 writes nothing: that version has no server DISCONNECT.
pub fn encode(packet: &Outbound, version: Version, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let err = |e: &dyn std::fmt::Display| EncodeError(e.to_string());
    match version {
        Version::V311 => {
            let Some(p) = to_v4(packet) else {
                return Ok(());
            };
            p.write(buf, usize::MAX).map(drop).map_err(|e| err(&e))
        }
        Version::V5 => to_v5(packet)
            .write(buf, None)
            .map(drop)
            .map_err(|e| err(&e)),
    }
}

fn to_v4(packet: &Outbound) -> Option<v4::Packet> {
    use v4::ConnectReturnCode as C;
    Some(match packet {
        Outbound::ConnAck {
            session_present, ..
        } => v4::Packet::ConnAck(v4::ConnAck::new(C::Success, *session_present)),
        Outbound::ConnRefused(r) => v4::Packet::ConnAck(v4::ConnAck::new(
            match r {
                Refusal::UnsupportedVersion => C::RefusedProtocolVersion,
                Refusal::BadClientId => C::BadClientId,
                Refusal::BadCredentials => C::BadUserNamePassword,
                Refusal::NotAuthorized => C::NotAuthorized,
                Refusal::ServerBusy | Refusal::Unavailable => C::ServiceUnavailable,
            },
            false,
        )),
        // 3.1.1 has no negative PUBACK: the session closes the connection
        // instead of sending one.
        Outbound::PubAck(pkid, _) => v4::Packet::PubAck(v4::PubAck::new(*pkid)),
        Outbound::PubRec(pkid, _) => v4::Packet::PubRec(v4::PubRec::new(*pkid)),
        Outbound::PubComp(pkid) => v4::Packet::PubComp(v4::PubComp::new(*pkid)),
        Outbound::SubAck(pkid, granted) => v4::Packet::SubAck(v4::SubAck::new(
            *pkid,
            granted
                .iter()
                .map(|g| match g {
                    Some(q) => v4::SubscribeReasonCode::Success(to_qos4(*q)),
                    None => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        )),
        Outbound::UnsubAck(pkid, _) => v4::Packet::UnsubAck(v4::UnsubAck::new(*pkid)),
        Outbound::PingResp => v4::Packet::PingResp,
        Outbound::Publish(p) => v4::Packet::Publish(v4::Publish {
            dup: p.dup,
            qos: to_qos4(p.qos),
            retain: p.retain,
            topic: p.topic.clone(),
            pkid: p.pkid,
            payload: p.payload.clone(),
        }),
        Outbound::Disconnect(_) => return None,
    })
}

fn to_v5(packet: &Outbound) -> m5::Packet {
    use m5::ConnectReturnCode as C;
    match packet {
        Outbound::ConnAck {
            session_present,
            assigned_client_id,
            receive_max,
            max_packet_bytes,
        } => m5::Packet::ConnAck(m5::ConnAck {
            session_present: *session_present,
            code: C::Success,
            properties: Some(m5::ConnAckProperties {
                session_expiry_interval: None,
                receive_max: Some(*receive_max),
                // Publishes of every QoS are taken; deliveries go out at
                // QoS 1 at most, which SUBACK grants.
                max_qos: None,
                retain_available: Some(0),
                max_packet_size: Some(*max_packet_bytes),
                assigned_client_identifier: assigned_client_id.clone(),
                topic_alias_max: None,
                reason_string: None,
                user_properties: Vec::new(),
                wildcard_subscription_available: None,
                subscription_identifiers_available: Some(0),
                shared_subscription_available: Some(0),
                server_keep_alive: None,
                response_information: None,
                server_reference: None,
                authentication_method: None,
                authentication_data: None,
            }),
        }),
        Outbound::ConnRefused(r) => m5::Packet::ConnAck(m5::ConnAck {
            session_present: false,
            code: match r {
                Refusal::UnsupportedVersion => C::UnsupportedProtocolVersion,
                Refusal::BadClientId => C::ClientIdentifierNotValid,
                Refusal::BadCredentials => C::BadUserNamePassword,
                Refusal::NotAuthorized => C::NotAuthorized,
                Refusal::ServerBusy => C::ServerBusy,
                Refusal::Unavailable => C::ServerUnavailable,
            },
            properties: None,
        }),
        Outbound::PubAck(pkid, refusal) => m5::Packet::PubAck(m5::PubAck {
            pkid: *pkid,
            reason: match refusal {
                None => m5::PubAckReason::Success,
                Some(PublishRefusal::TopicNameInvalid) => m5::PubAckReason::TopicNameInvalid,
                Some(PublishRefusal::Unspecified) => m5::PubAckReason::UnspecifiedError,
                Some(PublishRefusal::PacketIdInUse) => m5::PubAckReason::PacketIdentifierInUse,
            },
            properties: None,
        }),
        Outbound::PubRec(pkid, refusal) => m5::Packet::PubRec(m5::PubRec {
            pkid: *pkid,
            reason: match refusal {
                None => m5::PubRecReason::Success,
                Some(PublishRefusal::TopicNameInvalid) => m5::PubRecReason::TopicNameInvalid,
                Some(PublishRefusal::Unspecified) => m5::PubRecReason::UnspecifiedError,
                Some(PublishRefusal::PacketIdInUse) => m5::PubRecReason::PacketIdentifierInUse,
            },
            properties: None,
        }),
        Outbound::PubComp(pkid) => m5::Packet::PubComp(m5::PubComp::new(*pkid, None)),
        Outbound::SubAck(pkid, granted) => m5::Packet::SubAck(m5::SubAck {
            pkid: *pkid,
            return_codes: granted
                .iter()
                .map(|g| match g {
                    Some(q) => m5::SubscribeReasonCode::Success(to_qos5(*q)),
                    None => m5::SubscribeReasonCode::TopicFilterInvalid,
                })
                .collect(),
            properties: None,
        }),
        Outbound::UnsubAck(pkid, count) => m5::Packet::UnsubAck(m5::UnsubAck {
            pkid: *pkid,
            reasons: vec![m5::UnsubAckReason::Success; *count],
            properties: None,
        }),
        Outbound::PingResp => m5::Packet::PingResp(m5::PingResp),
        Outbound::Publish(p) => m5::Packet::Publish(m5::Publish {
            dup: p.dup,
            qos: to_qos5(p.qos),
            retain: p.retain,
            topic: Bytes::copy_from_slice(p.topic.as_bytes()),
            pkid: p.pkid,
            payload: p.payload.clone(),
            properties: (!p.user_properties.is_empty()).then(|| m5::PublishProperties {
                payload_format_indicator: None,
                message_expiry_interval: None,
                topic_alias: None,
                response_topic: None,
                correlation_data: None,
                user_properties: p.user_properties.clone(),
                subscription_identifiers: Vec::new(),
                content_type: None,
            }),
        }),
        Outbound::Disconnect(g) => {
            use m5::DisconnectReasonCode as D;
            let reason_code = match g {
                Goodbye::MalformedPacket => D::MalformedPacket,
                Goodbye::ProtocolError => D::ProtocolError,
                Goodbye::TopicNameInvalid => D::TopicNameInvalid,
                Goodbye::PacketTooLarge => D::PacketTooLarge,
                Goodbye::ReceiveMaximumExceeded => D::ReceiveMaximumExceeded,
                Goodbye::KeepAliveTimeout => D::KeepAliveTimeout,
                Goodbye::SessionTakenOver => D::SessionTakenOver,
                Goodbye::ShuttingDown => D::ServerShuttingDown,
                Goodbye::TopicAliasInvalid => D::TopicAliasInvalid,
            };
            // Always with a reason string: rumqttc 0.25 writes a
            // DISCONNECT without properties with a wrong remaining length
            // (and one with empty properties as a normal disconnection).
            m5::Packet::Disconnect(m5::Disconnect {
                reason_code,
                properties: Some(m5::DisconnectProperties {
                    session_expiry_interval: None,
                    reason_string: Some(g.reason().to_owned()),
                    user_properties: Vec::new(),
                    server_reference: None,
                }),
            })
        }
    }
}

/// Whether `topic` matches `filter` (`+` one level, `#` the rest).
pub fn matches(topic: &str, filter: &str) -> bool {
    m4::matches(topic, filter)
}

/// Whether `filter` is a well-formed topic filter.
pub fn valid_filter(filter: &str) -> bool {
    m4::valid_filter(filter)
}

/// Whether `topic` is a well-formed topic name (no wildcards).
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && m4::valid_topic(topic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded_v4(p: v4::Packet) -> BytesMut {
        let mut buf = BytesMut::new();
        p.write(&mut buf, usize::MAX).unwrap();
        buf
    }

    #[test]
    fn decode_connect_v311_then_publish() {
        let mut connect = v4::Connect::new("dev-1");
        connect.keep_alive = 30;
        let mut buf = encoded_v4(v4::Packet::Connect(connect));
        let Some(Inbound::Connect(c)) = decode(&mut buf, None, 1024).unwrap() else {
            panic!("not a connect")
        };
        assert_eq!(
            (c.version, c.client_id.as_str(), c.keep_alive_s),
            (Version::V311, "dev-1", 30)
        );
        let mut publish = v4::Publish::new("sensors/a", m4::QoS::AtLeastOnce, b"21.5".to_vec());
        publish.pkid = 7;
        let mut buf = encoded_v4(v4::Packet::Publish(publish));
        let Some(Inbound::Publish(p)) = decode(&mut buf, Some(Version::V311), 1024).unwrap() else {
            panic!("not a publish")
        };
        assert_eq!(
            (p.topic.as_str(), p.pkid, &p.payload[..]),
            ("sensors/a", 7, &b"21.5"[..])
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn decode_connect_v5_reads_session_expiry() {
        let connect = m5::Connect {
            keep_alive: 10,
            client_id: "dev-5".into(),
            clean_start: false,
            properties: Some(m5::ConnectProperties {
                session_expiry_interval: Some(3600),
                receive_maximum: None,
                max_packet_size: None,
                topic_alias_max: None,
                request_response_info: None,
                request_problem_info: None,
                user_properties: Vec::new(),
                authentication_method: None,
                authentication_data: None,
            }),
        };
        let mut buf = BytesMut::new();
        m5::Packet::Connect(connect, None, None)
            .write(&mut buf, None)
            .unwrap();
        let Some(Inbound::Connect(c)) = decode(&mut buf, None, 1024).unwrap() else {
            panic!("not a connect")
        };
        assert_eq!(
            (c.version, c.clean, c.session_expiry_s),
            (Version::V5, false, Some(3600))
        );
    }

    /// Regression: the v5 codec refuses the two-byte DISCONNECT (`e0 00`)
    /// that paho and mosquitto send for a normal disconnection.
    #[test]
    fn decode_v5_short_disconnect_is_normal() {
        let mut buf = BytesMut::from(&[0xe0u8, 0x00][..]);
        assert_eq!(
            decode(&mut buf, Some(Version::V5), 1024).unwrap(),
            Some(Inbound::Disconnect { with_will: false })
        );
    }

    /// Regression: rumqttc writes a DISCONNECT without properties with a
    /// remaining length one short, which desynchronises the client.
    #[test]
    fn encode_v5_disconnect_reads_back_with_its_reason() {
        let mut buf = BytesMut::new();
        encode(
            &Outbound::Disconnect(Goodbye::ReceiveMaximumExceeded),
            Version::V5,
            &mut buf,
        )
        .unwrap();
        match m5::Packet::read(&mut buf, None).unwrap() {
            m5::Packet::Disconnect(d) => assert_eq!(
                d.reason_code,
                m5::DisconnectReasonCode::ReceiveMaximumExceeded
            ),
            other => panic!("read back {other:?}"),
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn decode_partial_packet_waits_and_oversized_is_refused() {
        let mut buf = BytesMut::from(&[0x30u8, 0x0a, 0x00][..]);
        assert_eq!(decode(&mut buf, Some(Version::V311), 1024).unwrap(), None);
        let mut buf = BytesMut::from(&[0x30u8, 0xff, 0x7f][..]);
        assert!(matches!(
            decode(&mut buf, Some(Version::V311), 1024),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn decode_first_packet_not_connect_is_refused() {
        let mut buf = BytesMut::from(&[0xc0u8, 0x00][..]);
        assert!(matches!(
            decode(&mut buf, None, 1024),
            Err(DecodeError::NotConnect)
        ));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256), v in 0u8..3) {
            let version = match v { 0 => None, 1 => Some(Version::V311), _ => Some(Version::V5) };
            let mut buf = BytesMut::from(&bytes[..]);
            // Decode until the bytes run out or an error ends the connection.
            for _ in 0..bytes.len() + 1 {
                match decode(&mut buf, version, 128) {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }

        #[test]
        fn publish_roundtrips_in_both_versions(
            topic in "[a-z]{1,8}(/[a-z]{1,8}){0,3}",
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            pkid in 1u16..,
            v5 in any::<bool>(),
        ) {
            let version = if v5 { Version::V5 } else { Version::V311 };
            let p = Publish {
                topic, payload: Bytes::from(payload), qos: QoS::AtLeastOnce, pkid,
                dup: false, retain: false,
                user_properties: if v5 { vec![("k".into(), "v".into())] } else { Vec::new() },
                topic_alias: None,
            };
            let mut buf = BytesMut::new();
            encode(&Outbound::Publish(p.clone()), version, &mut buf).unwrap();
            prop_assert_eq!(decode(&mut buf, Some(version), 1 << 16).unwrap(), Some(Inbound::Publish(p)));
        }
    }
}
