//! `edgebus plugin add | list | describe | remove`, and the `NAME[:k=v,…]`
//! syntax every attach point uses.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use edgebus::bundled;
use edgebus_client::{FailurePolicy, PluginDescription, PluginRef};
use edgebus_proto::frame::{Request, Response};
use serde_json::json;

use super::table::{self, Table};
use super::{CommonArgs, Failure, Output, PolicyArg};

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

/// A failure policy as `--on-failure` spells it (`dead-letter`), so what
/// a command prints can be pasted back into a flag.
pub fn policy_name(policy: FailurePolicy) -> String {
    let arg = match policy {
        FailurePolicy::Skip => PolicyArg::Skip,
        FailurePolicy::DeadLetter => PolicyArg::DeadLetter,
        FailurePolicy::Halt => PolicyArg::Halt,
    };
    arg.to_possible_value()
        .expect("every policy is an --on-failure value")
        .get_name()
        .to_owned()
}

#[derive(Debug, Subcommand)]
#[command(after_help = "Examples:
  edgebus plugin add --bundled json-filter
  edgebus plugin add json-filter plugins/target/wasm32-wasip2/release/json_filter.wasm
  edgebus plugin list")]
pub enum PluginCommand {
    /// Register a WebAssembly component, or replace it (new version).
    #[command(after_help = "Examples:
  edgebus plugin add --bundled json-filter       # one of `plugin list --bundled`
  edgebus plugin add json-filter plugins/target/wasm32-wasip2/release/json_filter.wasm
  edgebus plugin add only-hot target/wasm32-wasip2/release/only_hot.wasm --output json")]
    Add(AddArgs),
    /// List the broker's plugins, or those embedded in this binary.
    #[command(after_help = "Examples:
  edgebus plugin list
  edgebus plugin list --bundled                  # no broker needed
  edgebus plugin list --output yaml")]
    List(ListArgs),
    /// Show a plugin's version, hash and where it is attached.
    #[command(after_help = "Examples:
  edgebus plugin describe json-filter
  edgebus plugin describe json-filter --output json")]
    Describe(NamedArgs),
    /// Remove a plugin nothing uses (ingest chains and pipelines that use
    /// it are named in the refusal).
    #[command(after_help = "Examples:
  edgebus plugin remove json-filter
  edgebus topic alter sensors --clear-ingest && edgebus plugin remove redact")]
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
    /// Plugin name; with `--bundled`, the embedded plugin's name, which it
    /// is registered under.
    name: String,
    /// The component (`cargo build --target wasm32-wasip2` output).
    #[arg(required_unless_present = "bundled", conflicts_with = "bundled")]
    file: Option<PathBuf>,
    /// Register the plugin of that name embedded in this binary.
    #[arg(long)]
    bundled: bool,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// List the plugins embedded in this binary instead (no broker needed).
    #[arg(long)]
    bundled: bool,
    #[command(flatten)]
    common: CommonArgs,
}

/// The hash as text output shows it: enough hex to tell versions apart.
fn short_hash(hash: &str) -> String {
    format!("sha256:{}", &hash[..hash.len().min(16)])
}

/// The hex SHA-256 of a component, as the broker's registry names it.
fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// `plugin list --bundled`: the embedded plugins.
fn print_bundled(output: Output) {
    match output {
        o @ (Output::Json | Output::Yaml) => {
            for b in bundled::BUNDLED {
                o.emit(&json!({
                    "name": b.name, "kind": b.kind, "size_bytes": b.wasm.len(),
                    "hash": sha256_hex(b.wasm), "description": b.description,
                }));
            }
        }
        Output::Text => {
            let mut t = Table::new(&["NAME", "KIND", "SIZE", "HASH", "DESCRIPTION"]);
            for b in bundled::BUNDLED {
                t.row(vec![
                    b.name.to_owned(),
                    b.kind.to_owned(),
                    table::bytes(b.wasm.len() as u64),
                    short_hash(&sha256_hex(b.wasm)),
                    b.description.to_owned(),
                ]);
            }
            t.print();
        }
    }
}

/// The component `plugin add` registers: the file, or the embedded plugin.
fn component(a: &AddArgs) -> Result<Vec<u8>, Failure> {
    match &a.file {
        Some(file) => std::fs::read(file)
            .map_err(|e| Failure::other(format!("reading {}: {e}", file.display()))),
        None => bundled::find(&a.name)
            .map(|b| b.wasm.to_vec())
            .ok_or_else(|| {
                Failure::new(
                    4,
                    format!(
                        "no bundled plugin {:?}; the bundled plugins are: {}",
                        a.name,
                        bundled::names()
                    ),
                )
            }),
    }
}

/// When a version was added, as RFC 3339 (or the raw ms if out of range).
fn added(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

fn users_text(users: &[String]) -> String {
    if users.is_empty() {
        "-".to_owned()
    } else {
        users.join(", ")
    }
}

/// `plugin list` and `plugin add`: a table, or one object per plugin.
fn print(plugins: &[PluginDescription], output: Output) {
    match output {
        o @ (Output::Json | Output::Yaml) => {
            for p in plugins {
                o.emit(&plugin_json(p));
            }
        }
        Output::Text => {
            let mut t = Table::new(&["NAME", "VERSION", "KIND", "SIZE", "HASH", "USED-BY"]);
            for p in plugins {
                t.row(vec![
                    p.name.clone(),
                    p.version.to_string(),
                    p.kind.clone(),
                    table::bytes(p.size_bytes),
                    short_hash(&p.hash),
                    users_text(&p.users),
                ]);
            }
            t.print();
        }
    }
}

fn plugin_json(p: &PluginDescription) -> serde_json::Value {
    json!({
        "name": p.name, "version": p.version, "kind": p.kind, "hash": p.hash,
        "size_bytes": p.size_bytes, "added_ms": p.added_ms, "used_by": p.users,
    })
}

/// `plugin describe`: one plugin's summary.
fn describe(p: &PluginDescription, output: Output) {
    match output {
        o @ (Output::Json | Output::Yaml) => o.emit(&plugin_json(p)),
        Output::Text => print!(
            "{}",
            table::summary(&[
                ("name", p.name.clone()),
                ("version", p.version.to_string()),
                ("kind", p.kind.clone()),
                (
                    "size",
                    format!("{} ({} bytes)", table::bytes(p.size_bytes), p.size_bytes)
                ),
                ("sha256", p.hash.clone()),
                ("added", added(p.added_ms)),
                ("used by", users_text(&p.users)),
            ])
        ),
    }
}

pub async fn run(cmd: PluginCommand) -> Result<(), Failure> {
    match cmd {
        PluginCommand::Add(a) => {
            let wasm = component(&a)?;
            let request = Request::PluginAdd {
                name: a.name,
                wasm: wasm.into(),
            };
            let plugins = plugins(&a.common, &request).await?;
            print(&plugins, a.common.output);
        }
        PluginCommand::List(l) if l.bundled => print_bundled(l.common.output),
        PluginCommand::List(l) => print(
            &plugins(&l.common, &Request::PluginList).await?,
            l.common.output,
        ),
        PluginCommand::Describe(a) => {
            let request = Request::PluginDescribe {
                name: a.name.clone(),
            };
            for p in plugins(&a.common, &request).await? {
                describe(&p, a.common.output);
            }
        }
        PluginCommand::Remove(a) => {
            let client = a.common.connect.connect().await?;
            client
                .request(&Request::PluginRemove {
                    name: a.name.clone(),
                })
                .await?;
            match a.common.output {
                o @ (Output::Json | Output::Yaml) => o.emit(&json!({"removed": a.name})),
                Output::Text => println!("removed plugin {}", a.name),
            }
        }
    }
    Ok(())
}

async fn plugins(
    common: &CommonArgs,
    request: &Request,
) -> Result<Vec<PluginDescription>, Failure> {
    let client = common.connect.connect().await?;
    match client.request(request).await? {
        Response::Plugins(plugins) => Ok(plugins),
        other => Err(Failure::other(format!("unexpected response {other:?}"))),
    }
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

    /// Regression: the policy was printed as `DeadLetter` in text and
    /// `deadletter` in JSON, neither of which `--on-failure` accepts.
    #[test]
    fn policy_name_is_what_on_failure_takes() {
        for policy in [
            FailurePolicy::Skip,
            FailurePolicy::DeadLetter,
            FailurePolicy::Halt,
        ] {
            let name = policy_name(policy);
            let parsed = PolicyArg::from_str(&name, false).expect("a --on-failure value");
            assert_eq!(FailurePolicy::from(parsed), policy);
        }
        assert_eq!(policy_name(FailurePolicy::DeadLetter), "dead-letter");
    }
}
