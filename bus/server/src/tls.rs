//! Broker TLS: a local CA made on first start, or the operator's own
//! certificate, and optional client-certificate verification (mTLS).
//!
//! The local CA exists so that TLS is always on and always verified, even on
//! a laptop with no setup: clients trust `data_dir/tls/ca.pem`, not "any
//! certificate".

use std::path::{Path, PathBuf};
use std::sync::Arc;

use edgebus_proto::frame::ALPN;

use crate::cluster::peer::PEER_ALPN;
use edgebus_proto::local;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Writing or reading certificate files failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// A certificate or key is unusable.
    #[error("{0}")]
    Invalid(String),
}

/// The files a broker serves with.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Broker certificate chain.
    pub cert: PathBuf,
    /// Broker private key.
    pub key: PathBuf,
    /// The local CA that signed `cert`, when the broker made it.
    pub local_ca: Option<PathBuf>,
    /// True when this start created the local CA.
    pub created: bool,
}

/// Resolves the broker's certificate: the configured one, or the local CA's
/// (created on first start). Warns when a private key it will use is
/// readable by other users.
pub fn resolve(config: &Config) -> Result<TlsFiles, TlsError> {
    let files = resolve_files(config)?;
    warn_if_exposed(&files.key);
    if files.local_ca.is_some() {
        warn_if_exposed(&local_ca_key_path(&config.data_dir));
    }
    Ok(files)
}

fn resolve_files(config: &Config) -> Result<TlsFiles, TlsError> {
    match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => Ok(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            local_ca: None,
            created: false,
        }),
        (None, None) => ensure_local_ca(&config.data_dir),
        _ => Err(TlsError::Invalid(
            "tls.cert and tls.key must be given together".into(),
        )),
    }
}

/// Creates `tls/ca.pem`, `tls/ca.key`, `tls/server.pem` and
/// `tls/server.key` in `data_dir` unless they exist, where clients on this
/// machine look for the CA ([`local::local_ca_path`]). The server
/// certificate names localhost, 127.0.0.1 and ::1.
pub fn ensure_local_ca(data_dir: &Path) -> Result<TlsFiles, TlsError> {
    let dir = local::tls_dir(data_dir);
    let ca_pem = local::local_ca_path(data_dir);
    let files = TlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        local_ca: Some(ca_pem.clone()),
        created: false,
    };
    if files.cert.exists() && files.key.exists() && ca_pem.exists() {
        return Ok(files);
    }
    create_private_dir(&dir)?;
    let ca_params = ca_params("edgebus local development CA")?;
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let (server_pem, server_key) = issue(
        &issuer,
        &["localhost", "127.0.0.1", "::1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    write_private(
        &local_ca_key_path(data_dir),
        ca_key.serialize_pem().as_bytes(),
    )?;
    write(&ca_pem, &ca_cert.pem())?;
    write_private(&files.key, server_key.as_bytes())?;
    write(&files.cert, &server_pem)?;
    Ok(TlsFiles {
        created: true,
        ..files
    })
}

/// Issues a leaf certificate for `names` signed by `issuer`; returns the
/// certificate and key as PEM. Used for the broker's certificate and, by
/// tests and operators, for client certificates.
pub fn issue(
    issuer: &Issuer<'_, &KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> Result<(String, String), TlsError> {
    issue_for(issuer, names, vec![usage])
}

/// [`issue`] with several extended key usages.
fn issue_for(
    issuer: &Issuer<'_, &KeyPair>,
    names: &[&str],
    usages: Vec<ExtendedKeyUsagePurpose>,
) -> Result<(String, String), TlsError> {
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().copied().unwrap_or("edgebus"),
    );
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages;
    params.use_authority_key_identifier_extension = true;
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A CA's self-signed parameters, valid 2024 to 2036.
fn ca_params(name: &str) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    Ok(params)
}

const CLUSTER_CA_NAME: &str = "edgebus cluster CA";

/// The cluster CA's certificate in a directory made by [`init_cluster_ca`].
pub fn cluster_ca_cert(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}

fn cluster_ca_key(dir: &Path) -> PathBuf {
    dir.join("ca.key")
}

/// `edgebus tls init DIR`: writes a cluster CA, `DIR/ca.pem` and
/// `DIR/ca.key` (owner-only), from which every node started with
/// `--cluster-ca DIR` issues its own certificate. Refuses to replace an
/// existing CA, whose certificates nodes and clients may already trust.
pub fn init_cluster_ca(dir: &Path) -> Result<PathBuf, TlsError> {
    let (pem, key) = (cluster_ca_cert(dir), cluster_ca_key(dir));
    if pem.exists() || key.exists() {
        return Err(TlsError::Invalid(format!(
            "{} already holds a cluster CA; remove it first to make a new one \
             (nodes and clients trusting the old one will then refuse the new)",
            dir.display()
        )));
    }
    create_private_dir(dir)?;
    let params = ca_params(CLUSTER_CA_NAME)?;
    let ca_key = KeyPair::generate()?;
    let cert = params.self_signed(&ca_key)?;
    write_private(&key, ca_key.serialize_pem().as_bytes())?;
    write(&pem, &cert.pem())?;
    Ok(pem)
}

/// The name in node `node`'s certificate that peers verify when they dial
/// it, whatever address they dial.
pub fn node_name(node: u64) -> String {
    format!("node-{node}.edgebus.cluster")
}

/// Issues node `node`'s certificate from the cluster CA in `ca_dir`, into
/// `data_dir/tls/cluster/`, for both ends of TLS: as a server (to clients
/// and peers: its node name, `localhost`, loopback and `listen`'s IP) and as
/// a client of its peers. Made afresh at every start, so a changed listen
/// address or CA takes effect.
pub fn issue_node_cert(
    ca_dir: &Path,
    data_dir: &Path,
    node: u64,
    listen: std::net::SocketAddr,
) -> Result<TlsFiles, TlsError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| TlsError::Io {
            path: path.to_owned(),
            source,
        })
    };
    let ca_key = KeyPair::from_pem(&read(&cluster_ca_key(ca_dir))?)?;
    if !cluster_ca_cert(ca_dir).exists() {
        return Err(TlsError::Invalid(format!(
            "{} has no ca.pem: make the cluster CA with `edgebus tls init {}`",
            ca_dir.display(),
            ca_dir.display()
        )));
    }
    // The CA was made by `init_cluster_ca` with these parameters: the same
    // name and the same key give the issuer and key identifier its
    // certificate carries, with no certificate parser needed.
    let issuer = Issuer::new(ca_params(CLUSTER_CA_NAME)?, &ca_key);
    let name = node_name(node);
    let ip = listen.ip().to_string();
    let mut names = vec![name.as_str(), "localhost", "127.0.0.1", "::1"];
    if !listen.ip().is_unspecified() && !names.contains(&ip.as_str()) {
        names.push(&ip);
    }
    let (pem, key) = issue_for(
        &issuer,
        &names,
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )?;
    let dir = local::tls_dir(data_dir).join("cluster");
    create_private_dir(&dir)?;
    let files = TlsFiles {
        cert: dir.join("node.pem"),
        key: dir.join("node.key"),
        local_ca: None,
        created: false,
    };
    write_private(&files.key, key.as_bytes())?;
    write(&files.cert, &pem)?;
    Ok(files)
}

/// The private key of the local CA in `data_dir`.
pub fn local_ca_key_path(data_dir: &Path) -> PathBuf {
    local::tls_dir(data_dir).join("ca.key")
}

fn write(path: &Path, contents: &str) -> Result<(), TlsError> {
    std::fs::write(path, contents).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Permission bits of secrets the broker writes: its owner's alone.
#[cfg(unix)]
const PRIVATE_FILE_MODE: u32 = 0o600;
/// Permission bits of the directory holding the local CA's keys.
#[cfg(unix)]
const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates `dir` (and its parents) readable by its owner alone. An existing
/// directory keeps its mode: it may be the operator's.
fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, PRIVATE_DIR_MODE);
    builder.create(dir).map_err(|source| TlsError::Io {
        path: dir.to_owned(),
        source,
    })
}

/// Writes a secret readable and writable by its owner alone. The mode is
/// set at creation, so the secret is never readable by others, even
/// briefly, and again after writing, for a file that existed before.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    let io = |source| TlsError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, PRIVATE_FILE_MODE);
    let mut file = options.open(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(PRIVATE_FILE_MODE))
            .map_err(io)?;
    }
    file.write_all(contents).map_err(io)
}

/// Whether a file's mode lets its group or other users read or write it.
#[cfg(unix)]
pub fn is_exposed(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
}

/// Whether a file's mode lets its group or other users read or write it
/// (never, where there are no Unix modes).
#[cfg(not(unix))]
pub fn is_exposed(_path: &Path) -> bool {
    false
}

/// Logs a warning when the private key at `path` is open to other users:
/// anyone who reads it can impersonate the broker (or, for the CA's key,
/// mint certificates clients trust).
pub fn warn_if_exposed(path: &Path) {
    if is_exposed(path) {
        tracing::warn!(
            "{} holds a private key but other users may read it; restrict it with \
             `chmod 600 {0}`",
            path.display()
        );
    }
}

/// The key that the broker's QUIC connection IDs are validated with,
/// derived from the persisted stateless-reset key. quinn drops packets
/// whose connection ID fails validation before it considers a stateless
/// reset, so the IDs a crashed broker handed out must still validate after
/// its restart: with quinn's default, random per process, clients of a
/// restarted broker waited out their whole idle timeout.
pub fn connection_id_key(reset_key: &ring::hmac::Key) -> u64 {
    let tag = ring::hmac::sign(reset_key, b"edgebus connection id key");
    let mut key = [0u8; 8];
    key.copy_from_slice(&tag.as_ref()[..8]);
    u64::from_le_bytes(key)
}

/// The key that signs QUIC stateless resets, kept in `data_dir` so that it
/// survives a restart. A broker restarted after a crash then answers packets
/// of connections it no longer knows with a reset the client accepts, and
/// clients reconnect at once instead of waiting out their idle timeout.
pub fn stateless_reset_key(data_dir: &Path) -> Result<Arc<ring::hmac::Key>, TlsError> {
    let path = data_dir.join("stateless-reset.key");
    let io = |source| TlsError::Io {
        path: path.clone(),
        source,
    };
    let secret = match std::fs::read(&path) {
        Ok(bytes) if bytes.len() == 32 => {
            warn_if_exposed(&path);
            bytes
        }
        Ok(_) => {
            return Err(TlsError::Invalid(format!(
                "{} is not 32 bytes",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = vec![0u8; 32];
            provider()
                .secure_random
                .fill(&mut bytes)
                .map_err(|_| TlsError::Invalid("no secure random source".into()))?;
            write_private(&path, &bytes)?;
            bytes
        }
        Err(e) => return Err(io(e)),
    };
    Ok(Arc::new(ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &secret,
    )))
}

/// The crypto provider of the broker's TLS, passed explicitly so no
/// process-wide default is needed.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate of a PEM file.
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Invalid(format!("reading certificates {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError::Invalid(format!(
            "no certificate in {}",
            path.display()
        )));
    }
    Ok(certs)
}

/// The private key of a PEM file.
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| TlsError::Invalid(format!("reading key {}: {e}", path.display())))
}

/// The rustls server config: TLS 1.3, ALPN `edgebus/1`, and client
/// certificates required when `client_ca` is set. A cluster node
/// (`cluster_ca`) also speaks `edgebus-peer/1` on the same listener and
/// accepts client certificates from the cluster CA; a peer connection is
/// refused unless it presents one ([`PeerVerifier`]), while a client needs
/// one only when `client_ca` is set.
pub fn server_config(
    files: &TlsFiles,
    client_ca: Option<&Path>,
    cluster_ca: Option<&Path>,
) -> Result<rustls::ServerConfig, TlsError> {
    let invalid = |e: &dyn std::fmt::Display| TlsError::Invalid(e.to_string());
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| invalid(&e))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in client_ca.iter().chain(cluster_ca.iter()) {
        for cert in load_certs(ca)? {
            roots.add(cert).map_err(|e| invalid(&e))?;
        }
    }
    let builder = if roots.is_empty() {
        builder.with_no_client_auth()
    } else {
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
        let verifier = if client_ca.is_none() {
            verifier.allow_unauthenticated()
        } else {
            verifier
        };
        builder.with_client_cert_verifier(verifier.build().map_err(|e| invalid(&e))?)
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| invalid(&e))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    if cluster_ca.is_some() {
        config.alpn_protocols.push(PEER_ALPN.to_vec());
    }
    Ok(config)
}

/// The client side of peer connections: this node's certificate, the
/// cluster CA as the only root, ALPN `edgebus-peer/1`, and keep-alives well
/// inside the control log's election timeout.
pub fn peer_client_config(
    files: &TlsFiles,
    cluster_ca: &Path,
) -> Result<quinn::ClientConfig, TlsError> {
    let invalid = |e: &dyn std::fmt::Display| TlsError::Invalid(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(cluster_ca)? {
        roots.add(cert).map_err(|e| invalid(&e))?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| invalid(&e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(load_certs(&files.cert)?, load_key(&files.key)?)
        .map_err(|e| invalid(&e))?;
    tls.alpn_protocols = vec![PEER_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| invalid(&e))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .stream_receive_window((8u32 << 20).into())
        .receive_window((32u32 << 20).into())
        .send_window(32 << 20)
        .keep_alive_interval(Some(std::time::Duration::from_millis(500)))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(std::time::Duration::from_secs(10))
                .map_err(|e| invalid(&e))?,
        ));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Checks a peer connection's client certificate: present, chained to the
/// cluster CA alone (not to a CA trusted only for clients), and naming the
/// node the peer says it is.
#[derive(Debug)]
pub struct PeerVerifier {
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

impl PeerVerifier {
    /// A verifier trusting the certificates of `cluster_ca`.
    pub fn new(cluster_ca: &Path) -> Result<Self, TlsError> {
        let invalid = |e: &dyn std::fmt::Display| TlsError::Invalid(e.to_string());
        let mut roots = rustls::RootCertStore::empty();
        for cert in load_certs(cluster_ca)? {
            roots.add(cert).map_err(|e| invalid(&e))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| invalid(&e))?;
        Ok(PeerVerifier { verifier })
    }

    /// Whether `connection`'s certificate is node `node`'s.
    pub fn verify(&self, connection: &quinn::Connection, node: u64) -> Result<(), String> {
        let chain = connection
            .peer_identity()
            .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
            .ok_or("a peer must present its node certificate")?;
        let (end_entity, intermediates) = chain.split_first().ok_or("empty certificate chain")?;
        self.verifier
            .verify_client_cert(end_entity, intermediates, rustls_pki_types::UnixTime::now())
            .map_err(|e| format!("not a certificate of the cluster CA: {e}"))?;
        let name =
            rustls_pki_types::ServerName::try_from(node_name(node)).map_err(|e| e.to_string())?;
        webpki::EndEntityCert::try_from(end_entity)
            .and_then(|cert| cert.verify_is_valid_for_subject_name(&name))
            .map_err(|e| format!("the certificate is not node {node}'s: {e}"))
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Regression: `tls/ca.key` and `tls/server.key` were written with the
    /// process umask's mode (0644), readable by every local user.
    #[test]
    fn ensure_local_ca_keys_are_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let files = ensure_local_ca(dir.path()).unwrap();
        assert_eq!(mode(&local::tls_dir(dir.path())), 0o700);
        assert_eq!(mode(&local_ca_key_path(dir.path())), 0o600);
        assert_eq!(mode(&files.key), 0o600);
        stateless_reset_key(dir.path()).unwrap();
        assert_eq!(mode(&dir.path().join("stateless-reset.key")), 0o600);
        assert!(!is_exposed(&files.key));
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(is_exposed(&files.key));
    }
}
