//! `--broker`, `--ca`, `--cert`, `--key`, `--profile`,
//! `--connect-timeout`: how commands reach a broker.
//!
//! Each setting comes from, in order: its flag, its environment variable,
//! the profile (`--profile`, `$EDGEBUS_PROFILE` or the current one; see
//! [`super::profile`]), the default.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use clap::Args;
use edgebus_client::tls::Identity;
use edgebus_client::{Client, ClientConfig, ClientError};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::Failure;
use super::profile::{Profile, Profiles};
use edgebus_client::local::{DEFAULT_PORT, default_data_dir, local_ca_path};

/// Every client a command connected, for [`close_connected`].
static CONNECTED: Mutex<Vec<Client>> = Mutex::new(Vec::new());

/// Longest a command's exit waits for its connections' closes to go out
/// (see [`Client::close_promptly`]); they normally take a millisecond or
/// two.
const CLOSE_WAIT: Duration = Duration::from_millis(100);

/// Closes every client the command connected, rather than letting them
/// drop with the process: the broker then learns at once that the command
/// is gone. Otherwise it finds out at its idle timeout, and until then the
/// connection holds one of its connection slots, and a subscription goes
/// on reading new records and storing its named plugin state past what was
/// printed.
pub async fn close_connected() {
    let clients = std::mem::take(&mut *CONNECTED.lock().unwrap_or_else(PoisonError::into_inner));
    futures::future::join_all(clients.iter().map(|c| c.close_promptly(CLOSE_WAIT))).await;
}

/// Exit code of a broker that cannot be reached or authenticated.
const UNREACHABLE: u8 = 3;

/// Addresses of one broker name dialled at once (a name such as
/// `localhost` may resolve to `::1` and `127.0.0.1`, and a broker may
/// listen on only one of them).
const ADDRS_MAX: usize = 4;

/// The SDK's own connect deadline, past ours: ours is what the user asked
/// for and is the one that fires on the first connect; the SDK's bounds
/// reconnects of a long-running command.
const SDK_DEADLINE_SLACK: Duration = Duration::from_secs(1);

/// Connection flags shared by every client command.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Broker address, HOST:PORT or HOST, or a comma-separated list of a
    /// cluster's brokers (the first to answer is used, and the others when
    /// it is lost) [default: the profile's, else 127.0.0.1:7171].
    #[arg(long, env = "EDGEBUS_BROKER")]
    pub broker: Option<String>,
    /// CA certificate (PEM) that signed the broker's certificate [default:
    /// the profile's, else the local CA a broker makes in the default data
    /// dir].
    #[arg(long, env = "EDGEBUS_CA")]
    pub ca: Option<PathBuf>,
    /// Name the broker's certificate must carry [default: the profile's,
    /// else the host name of --broker, else localhost].
    #[arg(long)]
    pub server_name: Option<String>,
    /// Client certificate (PEM), for brokers that require mTLS.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Connection profile to use instead of the current one (see `edgebus
    /// profile`).
    #[arg(long, env = "EDGEBUS_PROFILE")]
    pub profile: Option<String>,
    /// Give up when no broker answers within this long (500ms, 2s, 1m;
    /// a bare number is seconds).
    #[arg(long, env = "EDGEBUS_CONNECT_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
}

/// Where the CA a client trusts came from, to say so when it is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CaSource {
    /// `--ca` or `$EDGEBUS_CA`.
    Given,
    /// A profile.
    Profile(String),
    /// The local CA of the default data dir.
    LocalDefault,
}

/// A broker to dial, every setting resolved.
#[derive(Debug, Clone)]
struct Target {
    broker: String,
    /// The profile `broker` came from, if it did.
    broker_profile: Option<String>,
    ca: PathBuf,
    ca_source: CaSource,
    server_name: String,
    identity: Option<Identity>,
}

impl ConnectArgs {
    /// Flags for `broker` with `ca`, as if typed: for commands with a
    /// `--broker` of their own (`bench`).
    pub fn for_broker(broker: String, ca: Option<PathBuf>, connect_timeout: Duration) -> Self {
        ConnectArgs {
            broker: Some(broker),
            ca,
            server_name: None,
            cert: None,
            key: None,
            profile: None,
            connect_timeout,
        }
    }

    /// Connects, saying loudly on stderr when it trusts a local dev CA.
    pub async fn connect(&self) -> Result<Client, Failure> {
        let profile = Profiles::load()?.select(self.profile.as_deref())?;
        let target = self.resolve(profile)?;
        if target.ca_source == CaSource::LocalDefault {
            eprintln!(
                "note: trusting the local development CA at {} (pass --ca to choose another)",
                target.ca.display()
            );
        }
        target.connect(self.connect_timeout).await
    }

    /// Settles each setting: flag or environment, else profile, else default.
    fn resolve(&self, profile: Option<(String, Profile)>) -> Result<Target, Failure> {
        let (profile_name, profile) = profile.unzip();
        let profile = profile.unwrap_or_default();
        let broker_profile = match (&self.broker, &profile.broker) {
            (None, Some(_)) => profile_name.clone(),
            _ => None,
        };
        let broker = self
            .broker
            .clone()
            .or(profile.broker)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)).to_string());
        let (ca, ca_source) = match (&self.ca, profile.ca, profile_name) {
            (Some(ca), _, _) => (ca.clone(), CaSource::Given),
            (None, Some(ca), Some(name)) => (ca, CaSource::Profile(name)),
            _ => {
                let ca = local_ca_path(&default_data_dir());
                if !ca.exists() {
                    return Err(Failure::new(
                        UNREACHABLE,
                        format!(
                            "no CA given and no local broker CA at {}; start `edgebus serve`, \
                             or pass the broker's CA with --ca PATH or EDGEBUS_CA=PATH \
                             (or a profile: `edgebus profile create`)",
                            ca.display()
                        ),
                    ));
                }
                (ca, CaSource::LocalDefault)
            }
        };
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(Identity {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => profile
                .cert
                .zip(profile.key)
                .map(|(cert, key)| Identity { cert, key }),
        };
        if brokers(&broker).next().is_none() {
            return Err(Failure::new(
                2,
                format!("--broker {broker:?} names no broker"),
            ));
        }
        let server_name = self
            .server_name
            .clone()
            .or(profile.server_name)
            .or_else(|| brokers(&broker).next().and_then(host_name))
            .unwrap_or_else(|| "localhost".to_owned());
        Ok(Target {
            broker,
            broker_profile,
            ca,
            ca_source,
            server_name,
            identity,
        })
    }
}

impl Target {
    /// Dials every address the broker names resolve to at once and keeps
    /// the first connection made, with the others as its bootstrap list;
    /// explains what went wrong otherwise.
    async fn connect(&self, timeout: Duration) -> Result<Client, Failure> {
        let mut addrs = Vec::new();
        for broker in brokers(&self.broker) {
            for addr in resolve_addrs(broker).await? {
                if !addrs.contains(&addr) {
                    addrs.push(addr);
                }
            }
        }
        let mut attempts: FuturesUnordered<_> = addrs
            .iter()
            .map(|&addr| {
                let mut config = ClientConfig::new(addr, self.ca.clone());
                config.bootstrap = addrs
                    .iter()
                    .filter(|a| **a != addr)
                    .map(|&a| a.into())
                    .collect();
                config.server_name = self.server_name.clone();
                config.identity = self.identity.clone();
                config.connect_timeout = timeout + SDK_DEADLINE_SLACK;
                Client::connect(config)
            })
            .collect();
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut errors = Vec::new();
        loop {
            tokio::select! {
                attempt = attempts.next() => match attempt {
                    Some(Ok(client)) => {
                        CONNECTED
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(client.clone());
                        return Ok(client);
                    }
                    Some(Err(e)) => errors.push(e),
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
        Err(self.explain(timeout, errors))
    }

    /// The most telling of the attempts' errors, in words that say what to
    /// do; no error at all means nothing answered in time.
    fn explain(&self, timeout: Duration, errors: Vec<ClientError>) -> Failure {
        let certificate = errors.iter().find_map(|e| match e {
            ClientError::Connection { detail, .. } if detail.contains("certificate") => {
                Some(detail.clone())
            }
            _ => None,
        });
        if let Some(detail) = certificate {
            return Failure::new(UNREACHABLE, self.certificate_advice(&detail));
        }
        match errors.into_iter().find(|e| !is_timeout(e)) {
            Some(e) => e.into(),
            None => Failure::new(
                UNREACHABLE,
                format!(
                    "no broker answered at {}{} within {}: is `edgebus serve` running? \
                     (pass --broker HOST:PORT for another broker, --connect-timeout to wait \
                     longer)",
                    self.broker,
                    self.broker_profile
                        .as_ref()
                        .map(|p| format!(" (from profile {p:?})"))
                        .unwrap_or_default(),
                    show_duration(timeout)
                ),
            ),
        }
    }

    fn certificate_advice(&self, detail: &str) -> String {
        let from = match &self.ca_source {
            CaSource::Given => "given by --ca or EDGEBUS_CA".to_owned(),
            CaSource::Profile(name) => format!("from profile {name:?}"),
            CaSource::LocalDefault => "the local CA of the default data dir".to_owned(),
        };
        if detail.contains("NotValidForName") || detail.contains("not valid for name") {
            return format!(
                "the broker at {} has a certificate that does not name {:?} ({detail}); pass \
                 the name it carries with --server-name NAME (a broker's own certificate names \
                 localhost)",
                self.broker, self.server_name
            );
        }
        format!(
            "the broker at {} presented a certificate that the CA {} ({from}) does not \
             vouch for ({detail}); pass the CA that signed it with --ca PATH or \
             EDGEBUS_CA=PATH (a broker that made its own has it at DATA_DIR/tls/ca.pem)",
            self.broker,
            self.ca.display()
        )
    }
}

fn is_timeout(e: &ClientError) -> bool {
    matches!(e, ClientError::Connection { detail, .. } if detail.contains("timed out"))
        || matches!(e, ClientError::Timeout(_))
}

/// The brokers of a `--broker` list (`A1,A2,A3`; one broker is a list of
/// one).
fn brokers(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|b| !b.is_empty())
}

/// `broker` with the default port when it has none.
fn with_port(broker: &str) -> String {
    if broker.parse::<SocketAddr>().is_ok() {
        return broker.to_owned();
    }
    if let Ok(ip) = broker.parse::<IpAddr>() {
        return SocketAddr::new(ip, DEFAULT_PORT).to_string();
    }
    match broker.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() => broker.to_owned(),
        _ => format!("{broker}:{DEFAULT_PORT}"),
    }
}

/// The host name of `broker`, when it is a name rather than an address.
fn host_name(broker: &str) -> Option<String> {
    let full = with_port(broker);
    if full.parse::<SocketAddr>().is_ok() {
        return None;
    }
    full.rsplit_once(':').map(|(host, _)| host.to_owned())
}

/// The socket addresses of `broker` (`HOST:PORT`, `HOST`, `IP:PORT`, `IP`).
async fn resolve_addrs(broker: &str) -> Result<Vec<SocketAddr>, Failure> {
    let full = with_port(broker);
    let resolved = tokio::net::lookup_host(full.as_str()).await.map_err(|e| {
        Failure::new(
            UNREACHABLE,
            format!("cannot resolve broker address {broker:?}: {e}"),
        )
    })?;
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for addr in resolved {
        if !addrs.contains(&addr) && addrs.len() < ADDRS_MAX {
            addrs.push(addr);
        }
    }
    if addrs.is_empty() {
        return Err(Failure::new(
            UNREACHABLE,
            format!("broker address {broker:?} resolves to no address"),
        ));
    }
    Ok(addrs)
}

/// Parses `500ms`, `2s`, `1.5s`, `1m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit_secs) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 2s, 1m)"))?;
    let secs = value * unit_secs;
    if !(secs > 0.0 && secs <= 3600.0) {
        return Err(format!("{s:?}: a duration above 0 and at most 1 hour"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn show_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_duration_takes_units_and_bare_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("2h").is_err());
    }

    #[test]
    fn broker_without_port_gets_the_default_and_names_are_server_names() {
        assert_eq!(with_port("localhost"), "localhost:7171");
        assert_eq!(with_port("edge-1:9000"), "edge-1:9000");
        assert_eq!(with_port("::1"), "[::1]:7171");
        assert_eq!(with_port("[::1]:7000"), "[::1]:7000");
        assert_eq!(with_port("10.0.0.1"), "10.0.0.1:7171");
        assert_eq!(host_name("edge-1:9000").as_deref(), Some("edge-1"));
        assert_eq!(host_name("127.0.0.1:7171"), None);
        assert_eq!(host_name("[::1]:7171"), None);
    }

    #[test]
    fn a_broker_list_names_each_broker_and_the_first_names_the_server() {
        let list: Vec<&str> = brokers("edge-1:7101, edge-2:7102,,127.0.0.1").collect();
        assert_eq!(list, ["edge-1:7101", "edge-2:7102", "127.0.0.1"]);
        let mut a = args();
        a.ca = Some("/flag/ca.pem".into());
        a.broker = Some("edge-1:7101,127.0.0.1:7102".into());
        assert_eq!(a.resolve(None).unwrap().server_name, "edge-1");
        a.broker = Some(",".into());
        assert_eq!(a.resolve(None).unwrap_err().code, 2);
    }

    fn args() -> ConnectArgs {
        ConnectArgs::for_broker("h:1".into(), None, Duration::from_secs(2))
    }

    #[test]
    fn flags_beat_the_profile_and_the_profile_beats_defaults() {
        let profile = Profile {
            broker: Some("prof:9".into()),
            ca: Some("/p/ca.pem".into()),
            cert: Some("/p/c.pem".into()),
            key: Some("/p/k.pem".into()),
            server_name: None,
        };
        let mut a = args();
        a.ca = Some("/flag/ca.pem".into());
        let t = a.resolve(Some(("p".into(), profile.clone()))).unwrap();
        assert_eq!(t.broker, "h:1");
        assert_eq!(t.ca, PathBuf::from("/flag/ca.pem"));
        assert_eq!(t.server_name, "h");
        assert_eq!(t.identity.unwrap().cert, PathBuf::from("/p/c.pem"));

        a.broker = None;
        a.ca = None;
        let t = a.resolve(Some(("p".into(), profile))).unwrap();
        assert_eq!(t.broker, "prof:9");
        assert_eq!(t.ca, PathBuf::from("/p/ca.pem"));
        assert_eq!(t.ca_source, CaSource::Profile("p".into()));
    }
}
