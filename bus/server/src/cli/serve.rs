//! `edgebus serve`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use super::Failure;
use edgebus::config::Config;

/// Run a broker until Ctrl-C or SIGTERM.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Data directory (default: $EDGEBUS_DATA or ~/.local/share/edgebus).
    #[arg(long)]
    data: Option<PathBuf>,
    /// UDP address to listen on (default 127.0.0.1:7171).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// TOML config file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
}

pub async fn run(args: ServeArgs) -> Result<(), Failure> {
    let mut config = match &args.config {
        Some(path) => Config::load(path).map_err(Failure::other)?,
        None => Config::default(),
    };
    if let Some(data) = args.data {
        config.data_dir = data;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let data_dir = config.data_dir.clone();
    let broker = edgebus::start(config).await.map_err(Failure::other)?;
    println!(
        "edgebus listening on {} (QUIC, ALPN edgebus/1)",
        broker.addr
    );
    println!("data dir: {}", data_dir.display());
    if let Some(ca) = &broker.local_ca {
        let verb = if broker.created_ca {
            "created"
        } else {
            "using"
        };
        println!(
            "TLS: {verb} local development CA {} — clients on this machine trust it by default; pass --ca {0} elsewhere",
            ca.display()
        );
    }
    wait_for_signal().await;
    println!("shutting down");
    broker.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
