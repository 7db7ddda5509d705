//! `--broker`, `--ca`, `--cert`, `--key`: how commands reach a broker.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use edgebus_client::tls::Identity;
use edgebus_client::{Client, ClientConfig};

use super::Failure;
use edgebus_client::local::{DEFAULT_PORT, default_data_dir, local_ca_path};

/// Connection flags shared by every client command.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Broker address.
    #[arg(long, env = "EDGEBUS_BROKER", default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)))]
    pub broker: SocketAddr,
    /// CA certificate (PEM) that signed the broker's certificate. Defaults
    /// to the local CA a broker makes in its default data dir.
    #[arg(long, env = "EDGEBUS_CA")]
    pub ca: Option<PathBuf>,
    /// Name the broker's certificate must carry.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// Client certificate (PEM), for brokers that require mTLS.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
}

impl ConnectArgs {
    /// Connects, saying loudly on stderr when it trusts a local dev CA.
    pub async fn connect(&self) -> Result<Client, Failure> {
        let ca = match &self.ca {
            Some(ca) => ca.clone(),
            None => {
                let ca = local_ca_path(&default_data_dir());
                if !ca.exists() {
                    return Err(Failure::new(
                        3,
                        format!(
                            "no CA given and no local broker CA at {}; start `edgebus serve` or pass --ca",
                            ca.display()
                        ),
                    ));
                }
                eprintln!(
                    "note: trusting the local development CA at {} (pass --ca to choose another)",
                    ca.display()
                );
                ca
            }
        };
        let mut config = ClientConfig::new(self.broker, ca);
        config.server_name = self.server_name.clone();
        config.identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(Identity {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        Ok(Client::connect(config).await?)
    }
}
