//! `edgebus plugin add | list | describe | remove`, and the `NAME[:k=v,…]`
//! syntax every attach point uses.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use edgebus_client::{PluginDescription, PluginRef};
use edgebus_proto::frame::{Request, Response};
use serde_json::json;

use super::{CommonArgs, Failure, Output};

/// Parses `NAME[:key=value,key=value…]`. A piece without `=` continues the
/// previous value, so `redact:fields=a.b,c,mode=mask` keeps `a.b,c`.
pub fn parse_plugin_ref(s: &str) -> Result<PluginRef, String> {
    let (name, rest) = s.split_once(':').unwrap_or((s, ""));
    if name.is_empty() {
        return Err(format!("{s:?}: expected NAME[:key=value,…]"));
    }
    let mut params: Vec<(String, String)> = Vec::new();
    for piece in rest.split(',').filter(|p| !p.is_empty()) {
        match piece.split_once('=') {
            Some((k, v)) => params.push((k.to_owned(), v.to_owned())),
            None => match params.last_mut() {
                Some((_, v)) => {
                    v.push(',');
                    v.push_str(piece);
                }
                None => return Err(format!("{s:?}: parameter {piece:?} is not key=value")),
            },
        }
    }
    Ok(PluginRef {
        name: name.to_owned(),
        params,
    })
}

/// Parses `key=value`.
pub fn parse_param(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

/// Shows a chain as it is written on the command line.
pub fn chain_text(chain: &[PluginRef]) -> String {
    chain
        .iter()
        .map(|p| {
            if p.params.is_empty() {
                p.name.clone()
            } else {
                let params: Vec<String> =
                    p.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{}:{}", p.name, params.join(","))
            }
        })
        .collect::<Vec<_>>()
        .join(" → ")
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Register a WebAssembly component, or replace it (new version).
    Add(AddArgs),
    /// List plugins.
    List(CommonArgs),
    /// Show a plugin's versions and where it is attached.
    Describe(NamedArgs),
    /// Remove a plugin nothing uses.
    Remove(NamedArgs),
}

#[derive(Debug, Args)]
pub struct NamedArgs {
    /// Plugin name.
    name: String,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// Plugin name.
    name: String,
    /// The component (`cargo build --target wasm32-wasip2` output).
    file: PathBuf,
    #[command(flatten)]
    common: CommonArgs,
}

fn print(plugins: &[PluginDescription], output: Output) {
    for p in plugins {
        match output {
            o @ (Output::Json | Output::Yaml) => o.emit(&json!({
                "name": p.name, "version": p.version, "kind": p.kind, "hash": p.hash,
                "size_bytes": p.size_bytes, "added_ms": p.added_ms, "used_by": p.users,
            })),
            Output::Text => {
                println!(
                    "{}\tv{}\t{}\t{} bytes\tsha256:{}",
                    p.name,
                    p.version,
                    p.kind,
                    p.size_bytes,
                    &p.hash[..p.hash.len().min(16)]
                );
                if !p.users.is_empty() {
                    println!("  used by {}", p.users.join(", "));
                }
            }
        }
    }
}

pub async fn run(cmd: PluginCommand) -> Result<(), Failure> {
    let (common, request) = match cmd {
        PluginCommand::Add(a) => {
            let wasm = std::fs::read(&a.file)
                .map_err(|e| Failure::other(format!("reading {}: {e}", a.file.display())))?;
            let request = Request::PluginAdd {
                name: a.name,
                wasm: wasm.into(),
            };
            (a.common, request)
        }
        PluginCommand::List(c) => (c, Request::PluginList),
        PluginCommand::Describe(a) => (a.common, Request::PluginDescribe { name: a.name }),
        PluginCommand::Remove(a) => {
            let name = a.name.clone();
            let client = a.common.connect.connect().await?;
            client.request(&Request::PluginRemove { name }).await?;
            println!("removed plugin {}", a.name);
            return Ok(());
        }
    };
    let client = common.connect.connect().await?;
    match client.request(&request).await? {
        Response::Plugins(plugins) => print(&plugins, common.output),
        other => return Err(Failure::other(format!("unexpected response {other:?}"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_ref_keeps_commas_inside_values() {
        let r = parse_plugin_ref("redact:fields=a.b,c,mode=mask").unwrap();
        assert_eq!(r.name, "redact");
        assert_eq!(
            r.params,
            vec![
                ("fields".into(), "a.b,c".into()),
                ("mode".into(), "mask".into())
            ]
        );
        assert_eq!(parse_plugin_ref("plain").unwrap().params, vec![]);
        assert!(parse_plugin_ref(":x=1").is_err());
        assert!(parse_plugin_ref("p:novalue").is_err());
    }
}
