//! `[mqtt]` in the broker's config: the listener, the topic mappings, who
//! may connect, and the limits every MQTT connection runs under.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::str::FromStr;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::packet;

/// The MQTT front door. Off unless `listen` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// TCP address of the MQTT listener (for example `127.0.0.1:1883`).
    pub listen: Option<SocketAddr>,
    /// TCP address of the MQTT-over-TLS listener (for example
    /// `0.0.0.0:8883`), with the broker's certificate; with
    /// `tls.client_ca` set, clients must present a certificate signed by
    /// it, and its common name is their identity.
    pub tls_listen: Option<SocketAddr>,
    /// Which MQTT topics go to which edgebus topics; a topic no mapping
    /// covers is refused.
    pub map: Vec<Mapping>,
    /// Let clients connect without a username. Unset: only clients on a
    /// loopback address may.
    pub allow_anonymous: Option<bool>,
    /// Accounts for username/password login.
    pub users: Vec<User>,
    /// Largest packet accepted (its remaining length); a larger one ends
    /// the connection (MQTT 5: DISCONNECT "packet too large").
    pub max_packet_bytes: u32,
    /// QoS 1 and 2 publishes a client may have unacknowledged, each way:
    /// MQTT 5's receive maximum; an MQTT 5 client over it is disconnected
    /// ("receive maximum exceeded"), a 3.1.1 client (which is never told
    /// it) waits until a commit frees room, and deliveries to either wait.
    pub max_inflight_per_client: u16,
    /// Connected clients; one more gets CONNACK "server busy" (3.1.1:
    /// "server unavailable").
    pub max_clients: usize,
    /// Topic filters one client may hold; past it SUBACK refuses the filter.
    pub max_subscriptions_per_client: usize,
    /// How long a new connection may take to send its CONNECT.
    pub connect_timeout_ms: u64,
    /// Stored sessions (persistent sessions of disconnected clients); a
    /// new persistent session past it is refused with "server busy".
    pub max_sessions: usize,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: None,
            tls_listen: None,
            map: Vec::new(),
            allow_anonymous: None,
            users: Vec::new(),
            max_packet_bytes: 1 << 20,
            max_inflight_per_client: 64,
            max_clients: 1024,
            max_subscriptions_per_client: 32,
            connect_timeout_ms: 10_000,
            max_sessions: 10_000,
        }
    }
}

/// MQTT topics matching `filter` are stored in edgebus topic `topic`, the
/// MQTT topic as the record key; subscribers to a filter inside it are fed
/// from that topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// MQTT topic filter, e.g. `sensors/#`.
    pub filter: String,
    /// edgebus topic.
    pub topic: String,
    /// Deliver the last record of each matching MQTT topic on subscribe.
    #[serde(default)]
    pub retain: bool,
}

/// Why a `--mqtt-map` value is not a mapping.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MappingError {
    /// No `=`.
    #[error("expected FILTER=TOPIC[,retain], got {0:?}")]
    Syntax(String),
    /// The filter is not a valid MQTT topic filter.
    #[error("{0:?} is not an MQTT topic filter")]
    Filter(String),
    /// An option other than `retain`.
    #[error("unknown mapping option {0:?} (only `retain`)")]
    Option(String),
}

impl FromStr for Mapping {
    type Err = MappingError;

    /// `sensors/#=sensors` or `commands/#=commands,retain`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (filter, rest) = s
            .rsplit_once('=')
            .ok_or_else(|| MappingError::Syntax(s.to_owned()))?;
        let mut parts = rest.split(',');
        let topic = parts.next().unwrap_or_default();
        if filter.is_empty() || topic.is_empty() {
            return Err(MappingError::Syntax(s.to_owned()));
        }
        let mut retain = false;
        for option in parts {
            match option {
                "retain" => retain = true,
                other => return Err(MappingError::Option(other.to_owned())),
            }
        }
        let mapping = Mapping {
            filter: filter.to_owned(),
            topic: topic.to_owned(),
            retain,
        };
        mapping.check()?;
        Ok(mapping)
    }
}

impl Mapping {
    /// Checks the filter.
    pub fn check(&self) -> Result<(), MappingError> {
        if packet::valid_filter(&self.filter) {
            Ok(())
        } else {
            Err(MappingError::Filter(self.filter.clone()))
        }
    }
}

/// One account. `password_hash` is
/// `pbkdf2-sha256$ITERATIONS$SALT_BASE64$HASH_BASE64` (standard base64,
/// a 32-byte hash), so the config never holds a password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Username.
    pub name: String,
    /// PBKDF2-HMAC-SHA256 of the password.
    pub password_hash: String,
}

/// Hash scheme name in `password_hash`.
const PBKDF2_SCHEME: &str = "pbkdf2-sha256";

/// Why a password hash in the config is unusable.
#[derive(Debug, thiserror::Error)]
#[error(
    "mqtt.users {user:?}: password_hash must be {PBKDF2_SCHEME}$ITERATIONS$SALT_BASE64$HASH_BASE64"
)]
pub struct BadPasswordHash {
    user: String,
}

impl User {
    /// Checks `password` against the stored hash. A malformed hash
    /// matches nothing (and is refused at start by [`User::check`]).
    pub fn verify(&self, password: &str) -> bool {
        let Some((iterations, salt, hash)) = self.parts() else {
            return false;
        };
        ring::pbkdf2::verify(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            &salt,
            password.as_bytes(),
            &hash,
        )
        .is_ok()
    }

    /// Refuses a hash that is not in the one accepted form.
    pub fn check(&self) -> Result<(), BadPasswordHash> {
        self.parts().map(drop).ok_or_else(|| BadPasswordHash {
            user: self.name.clone(),
        })
    }

    fn parts(&self) -> Option<(NonZeroU32, Vec<u8>, Vec<u8>)> {
        let mut fields = self.password_hash.split('$');
        let b64 = base64::engine::general_purpose::STANDARD;
        (fields.next()? == PBKDF2_SCHEME).then_some(())?;
        let iterations = fields.next()?.parse().ok()?;
        let salt = b64.decode(fields.next()?).ok()?;
        let hash = b64.decode(fields.next()?).ok()?;
        (fields.next().is_none() && hash.len() == 32).then_some((iterations, salt, hash))
    }
}

/// A `password_hash` value for `password` (for tests and documentation;
/// operators can make one with any PBKDF2 tool, see the README).
pub fn hash_password(password: &str, salt: &[u8], iterations: NonZeroU32) -> String {
    let mut hash = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        password.as_bytes(),
        &mut hash,
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    format!(
        "{PBKDF2_SCHEME}${iterations}${}${}",
        b64.encode(salt),
        b64.encode(hash)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_parses_filter_topic_and_retain() {
        assert_eq!(
            "sensors/#=sensors".parse(),
            Ok(Mapping {
                filter: "sensors/#".into(),
                topic: "sensors".into(),
                retain: false
            })
        );
        assert!("commands/+/#=cmd,retain".parse::<Mapping>().unwrap().retain);
        assert!(matches!(
            "sensors".parse::<Mapping>(),
            Err(MappingError::Syntax(_))
        ));
        assert!(matches!(
            "a/#/b=t".parse::<Mapping>(),
            Err(MappingError::Filter(_))
        ));
        assert!(matches!(
            "a/#=t,forever".parse::<Mapping>(),
            Err(MappingError::Option(_))
        ));
    }

    #[test]
    fn user_password_hash_verifies_only_its_password() {
        let user = User {
            name: "dev".into(),
            password_hash: hash_password("s3cret", b"salty", NonZeroU32::new(1000).unwrap()),
        };
        user.check().unwrap();
        assert!(user.verify("s3cret"));
        assert!(!user.verify("s3cret "));
        let bad = User {
            name: "dev".into(),
            password_hash: "plain".into(),
        };
        assert!(bad.check().is_err());
        assert!(!bad.verify("plain"));
    }

    #[test]
    fn mqtt_config_from_toml() {
        let c: MqttConfig = toml::from_str(
            "listen = \"127.0.0.1:1883\"\nmax_clients = 3\n[[map]]\nfilter = \"s/#\"\ntopic = \"s\"\nretain = true\n",
        )
        .unwrap();
        assert_eq!(c.max_clients, 3);
        assert_eq!(c.map.len(), 1);
        assert!(c.map[0].retain);
        assert_eq!(MqttConfig::default().listen, None);
    }
}
