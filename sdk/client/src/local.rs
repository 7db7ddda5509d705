//! Where a broker on this machine keeps its data and its local CA, so that
//! `edgebus serve`, the CLI and programs using this crate agree without flags.

use std::net::SocketAddr;
use std::path::PathBuf;

pub use edgebus_proto::local::{DEFAULT_PORT, local_ca_path};

use crate::client::{BrokerAddr, ClientConfig};
use crate::error::ClientError;

/// `$EDGEBUS_DATA`, else `$XDG_DATA_HOME/edgebus`, else
/// `~/.local/share/edgebus`, else `./edgebus-data`.
pub fn default_data_dir() -> PathBuf {
    edgebus_proto::local::default_data_dir(|name| std::env::var_os(name))
}

impl ClientConfig {
    /// The broker at `$EDGEBUS_BROKER` (a [`BrokerAddr`] such as
    /// `localhost:7171`; default `127.0.0.1:7171`), trusting `$EDGEBUS_CA`
    /// or else the local CA in the default data dir.
    pub fn local() -> Result<ClientConfig, ClientError> {
        let broker: BrokerAddr = match std::env::var("EDGEBUS_BROKER") {
            Ok(addr) => addr
                .parse()
                .map_err(|e| ClientError::Config(format!("EDGEBUS_BROKER: {e}")))?,
            Err(_) => SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)).into(),
        };
        let ca = std::env::var_os("EDGEBUS_CA")
            .map(PathBuf::from)
            .unwrap_or_else(|| local_ca_path(&default_data_dir()));
        Ok(ClientConfig::new(broker, ca))
    }
}
