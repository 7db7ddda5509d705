//! `edgebus tls init DIR`: a cluster CA for `serve --cluster-ca DIR`.

use std::path::PathBuf;

use clap::Subcommand;

use super::Failure;

/// Make TLS material for a cluster.
#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Write a cluster CA (DIR/ca.pem, DIR/ca.key owner-only). Every node
    /// started with `--cluster-ca DIR` issues its own certificate from it,
    /// and clients trust DIR/ca.pem. Refuses to replace an existing CA.
    #[command(after_help = "Example:
  edgebus tls init ./cluster-ca
  edgebus serve --data d1 --listen 127.0.0.1:7101 --node-id 1 \\
    --peer 1=127.0.0.1:7101 --peer 2=127.0.0.1:7102 --peer 3=127.0.0.1:7103 --cluster-ca ./cluster-ca")]
    Init {
        /// Directory to create the CA in.
        dir: PathBuf,
    },
}

pub fn run(cmd: TlsCommand) -> Result<(), Failure> {
    let TlsCommand::Init { dir } = cmd;
    let pem = edgebus::tls::init_cluster_ca(&dir).map_err(|e| Failure::new(4, e.to_string()))?;
    println!("cluster CA: {} (clients trust this file)", pem.display());
    println!(
        "private key: {} (owner-only; every node of the cluster needs it to issue its certificate)",
        dir.join("ca.key").display()
    );
    Ok(())
}
