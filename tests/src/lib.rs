//! Test harness: brokers on 127.0.0.1:0 over a temp dir, clients for them,
//! and raw QUIC connections for sending bytes no well-behaved client would.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bytes::{Bytes, BytesMut};
use edgebus::RunningBroker;
use edgebus::config::Config;
use edgebus_client::tls::{ALPN, Identity};
use edgebus_client::wire;
use edgebus_client::{Client, ClientConfig};
use edgebus_proto::frame::Response;
use tempfile::TempDir;

/// A broker in a temp dir, restartable on the same dir and port.
pub struct TestBroker {
    running: Option<RunningBroker>,
    /// The config it runs with; `listen` holds the bound port after start.
    pub config: Config,
    _dir: TempDir,
}

impl TestBroker {
    /// A broker with default limits.
    pub async fn start() -> Result<TestBroker> {
        Self::start_with(|_| {}).await
    }

    /// A broker whose config `tweak` adjusts first.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Result<TestBroker> {
        let dir = tempfile::tempdir()?;
        let mut config = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        // Tests share one compile cache, so each plugin is compiled once
        // per test run rather than once per broker.
        config.plugins.cache_dir =
            Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-plugin-cache"));
        tweak(&mut config);
        let running = edgebus::start(config.clone()).await?;
        config.listen = running.addr;
        Ok(TestBroker {
            running: Some(running),
            config,
            _dir: dir,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.config.listen
    }

    /// The local CA clients trust.
    pub fn ca(&self) -> PathBuf {
        self.config.local_ca_path()
    }

    /// A client config for this broker.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::new(self.addr(), self.ca())
    }

    /// A connected client.
    pub async fn client(&self) -> Result<Client> {
        Ok(Client::connect(self.client_config()).await?)
    }

    /// Shuts down gracefully and starts again on the same data and port.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await;
        self.running = Some(edgebus::start(self.config.clone()).await?);
        Ok(())
    }

    /// Shuts down gracefully.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

/// A QUIC connection that offers `alpn` and optionally a client identity,
/// bypassing the client library.
pub async fn raw_connection(
    addr: SocketAddr,
    ca: &std::path::Path,
    alpn: &[u8],
    identity: Option<&Identity>,
) -> Result<quinn::Connection> {
    let mut tls = edgebus_client::tls::client_config(ca, identity)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = endpoint.connect(addr, "localhost")?.await?;
    Ok(conn)
}

/// A raw connection with the right ALPN and no client certificate.
pub async fn raw_default(broker: &TestBroker) -> Result<quinn::Connection> {
    raw_connection(broker.addr(), &broker.ca(), ALPN, None).await
}

/// Writes `bytes` on a new stream, finishes it, and reads every response
/// frame until the broker finishes or resets the stream.
pub async fn exchange(conn: &quinn::Connection, bytes: &[u8]) -> Result<Vec<Response>> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(bytes).await?;
    send.finish()?;
    let mut out = Vec::new();
    loop {
        match wire::read_frame(&mut recv, 64 << 20).await {
            Ok(Some(body)) => out.push(Response::decode(body).context("decoding response")?.1),
            Ok(None) => return Ok(out),
            Err(wire::WireError::Read(_)) if !out.is_empty() => return Ok(out),
            Err(e) => bail!("reading response: {e}"),
        }
    }
}

/// Encodes a request frame.
pub fn frame(request: &edgebus_proto::frame::Request, correlation_id: u32) -> Bytes {
    let mut buf = BytesMut::new();
    request.encode(correlation_id, &mut buf);
    buf.freeze()
}

/// The wire code of an error response, or `None` for any other response.
pub fn error_code(r: &Response) -> Option<edgebus_proto::ErrorCode> {
    match r {
        Response::Error { code, .. } => edgebus_proto::ErrorCode::from_u16(*code),
        _ => None,
    }
}

/// Makes a CA and a client certificate signed by it, in `dir`; returns the
/// CA path and the client identity.
pub fn client_ca(dir: &std::path::Path) -> Result<(PathBuf, Identity)> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test client CA");
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let issuer = rcgen::Issuer::new(params, &key);
    let (pem, key_pem) = edgebus::tls::issue(
        &issuer,
        &["test-client"],
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    std::fs::create_dir_all(dir)?;
    let ca = dir.join("client-ca.pem");
    std::fs::write(&ca, cert.pem())?;
    let identity = Identity {
        cert: dir.join("client.pem"),
        key: dir.join("client.key"),
    };
    std::fs::write(&identity.cert, pem)?;
    std::fs::write(&identity.key, key_pem)?;
    Ok((ca, identity))
}

/// The bytes of a built plugin (`json_filter`, `spin`, …), building
/// `plugins/` first.
pub fn plugin_wasm(name: &str) -> Vec<u8> {
    edgebus::bundled::wasm(name).unwrap_or_else(|e| panic!("{e}"))
}

/// Registers a built plugin under `name`.
pub async fn add_plugin(client: &Client, name: &str, file: &str) -> Result<u32> {
    let response = client
        .request(&edgebus_proto::frame::Request::PluginAdd {
            name: name.into(),
            wasm: plugin_wasm(file).into(),
        })
        .await?;
    match response {
        Response::Plugins(p) => Ok(p[0].version),
        other => bail!("unexpected {other:?}"),
    }
}
