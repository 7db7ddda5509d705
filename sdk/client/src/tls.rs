//! TLS for clients: which CA to trust and which identity to present.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::ClientError;

pub use edgebus_proto::frame::ALPN;

/// A client certificate chain and key, for brokers that require mTLS.
#[derive(Debug, Clone)]
pub struct Identity {
    /// PEM file with the certificate chain.
    pub cert: PathBuf,
    /// PEM file with the private key.
    pub key: PathBuf,
}

/// Loads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            ClientError::Config(format!("reading certificates {}: {e}", path.display()))
        })?;
    if certs.is_empty() {
        return Err(ClientError::Config(format!(
            "no certificate in {}",
            path.display()
        )));
    }
    Ok(certs)
}

/// Loads the private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, ClientError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| ClientError::Config(format!("reading key {}: {e}", path.display())))
}

/// The crypto provider edgebus uses everywhere, passed explicitly so no
/// process-wide default is needed.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client config that trusts exactly the CA in `ca` and offers the
/// edgebus ALPN.
pub fn client_config(
    ca: &Path,
    identity: Option<&Identity>,
) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| ClientError::Config(format!("CA {}: {e}", ca.display())))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => builder
            .with_client_auth_cert(load_certs(&id.cert)?, load_key(&id.key)?)
            .map_err(|e| ClientError::Config(format!("client identity: {e}")))?,
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}
