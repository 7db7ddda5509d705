//! `edgebus profile`: named connection settings (broker, CA, client
//! certificate), so that commands need no flags. Stored in
//! `$XDG_CONFIG_HOME/edgebus/profiles.toml` (else
//! `~/.config/edgebus/profiles.toml`); a client command uses the current
//! profile for each setting it is given neither by flag nor environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Failure, Output};

/// Create, switch between, list and delete connection profiles.
#[derive(Debug, Subcommand)]
#[command(after_help = "Examples:
  edgebus profile create edge --broker gw-1.example:7171 --ca ./gw-ca.pem
  edgebus profile use edge && edgebus topic list     # now talks to gw-1")]
pub enum ProfileCommand {
    /// Create a profile and make it the current one.
    Create(CreateArgs),
    /// Make a profile the current one.
    Use {
        /// Profile name.
        name: String,
    },
    /// List profiles; `*` marks the current one.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Delete a profile.
    Delete {
        /// Profile name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Profile name (A-Z a-z 0-9 . _ -).
    name: String,
    /// Broker address, HOST:PORT.
    #[arg(long)]
    broker: Option<String>,
    /// CA certificate (PEM) that signed the broker's certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Name the broker's certificate carries, when not the --broker host.
    #[arg(long)]
    server_name: Option<String>,
    /// Client certificate (PEM), for brokers that require mTLS.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
}

/// One profile's settings; an absent one falls back to its default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Broker address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    /// CA certificate file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Client certificate file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Client key file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Name the broker's certificate carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// The profiles file.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profiles {
    /// The profile client commands use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    current: Option<String>,
    #[serde(default)]
    profiles: BTreeMap<String, Profile>,
}

/// `$XDG_CONFIG_HOME/edgebus/profiles.toml`, else
/// `$HOME/.config/edgebus/profiles.toml`.
fn path() -> Result<PathBuf, Failure> {
    let dir = match (
        std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()),
        std::env::var_os("HOME").filter(|d| !d.is_empty()),
    ) {
        (Some(dir), _) => PathBuf::from(dir),
        (None, Some(home)) => PathBuf::from(home).join(".config"),
        (None, None) => {
            return Err(Failure::other(
                "no config dir for profiles: set XDG_CONFIG_HOME or HOME",
            ));
        }
    };
    Ok(dir.join("edgebus").join("profiles.toml"))
}

impl Profiles {
    /// The profiles file, or none when it does not exist or there is no
    /// config dir to hold one (a service without `HOME`, say).
    pub fn load() -> Result<Profiles, Failure> {
        let Ok(path) = path() else {
            return Ok(Profiles::default());
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| Failure::other(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Profiles::default()),
            Err(e) => Err(Failure::other(format!("{}: {e}", path.display()))),
        }
    }

    /// The profile named `name`, else the current one, else none. Naming a
    /// profile that does not exist is an error.
    pub fn select(mut self, name: Option<&str>) -> Result<Option<(String, Profile)>, Failure> {
        let Some(name) = name.map(str::to_owned).or(self.current.take()) else {
            return Ok(None);
        };
        match self.profiles.remove(&name) {
            Some(profile) => Ok(Some((name, profile))),
            None => Err(self.unknown(&name)),
        }
    }

    fn unknown(&self, name: &str) -> Failure {
        let known: Vec<&str> = self.profiles.keys().map(String::as_str).collect();
        Failure::other(format!(
            "no profile {name:?} (profiles: {}); see `edgebus profile list`",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        ))
    }

    /// Writes the file whole, through a temporary file and a rename, so a
    /// crash leaves the old or the new file, never half of one.
    fn save(&self) -> Result<(), Failure> {
        let path = path()?;
        let io = |p: &Path, e: std::io::Error| Failure::other(format!("{}: {e}", p.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        let text = toml::to_string(self).map_err(Failure::other)?;
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, text).map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))
    }
}

fn check_name(name: &str) -> Result<(), Failure> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Failure::new(
            2,
            format!("profile name {name:?}: 1 to 64 of A-Z a-z 0-9 . _ -"),
        ))
    }
}

/// `path` made absolute, so the profile works from any directory; a note
/// when it does not exist (yet).
fn absolute(path: PathBuf) -> Result<PathBuf, Failure> {
    let abs = std::path::absolute(&path)
        .map_err(|e| Failure::other(format!("{}: {e}", path.display())))?;
    if !abs.exists() {
        eprintln!("note: {} does not exist (yet)", abs.display());
    }
    Ok(abs)
}

pub fn run(cmd: ProfileCommand) -> Result<(), Failure> {
    let mut profiles = Profiles::load()?;
    match cmd {
        ProfileCommand::Create(a) => {
            check_name(&a.name)?;
            if profiles.profiles.contains_key(&a.name) {
                return Err(Failure::other(format!(
                    "profile {:?} exists; `edgebus profile delete {0}` first",
                    a.name
                )));
            }
            let profile = Profile {
                broker: a.broker,
                ca: a.ca.map(absolute).transpose()?,
                cert: a.cert.map(absolute).transpose()?,
                key: a.key.map(absolute).transpose()?,
                server_name: a.server_name,
            };
            profiles.profiles.insert(a.name.clone(), profile);
            profiles.current = Some(a.name.clone());
            profiles.save()?;
            println!("created profile {} and switched to it", a.name);
        }
        ProfileCommand::Use { name } => {
            if !profiles.profiles.contains_key(&name) {
                return Err(profiles.unknown(&name));
            }
            profiles.current = Some(name.clone());
            profiles.save()?;
            println!("switched to profile {name}");
        }
        ProfileCommand::List { output } => list(&profiles, output),
        ProfileCommand::Delete { name } => {
            if profiles.profiles.remove(&name).is_none() {
                return Err(profiles.unknown(&name));
            }
            if profiles.current.as_deref() == Some(name.as_str()) {
                profiles.current = None;
            }
            profiles.save()?;
            println!("deleted profile {name}");
        }
    }
    Ok(())
}

fn list(profiles: &Profiles, output: Output) {
    let current = profiles.current.as_deref();
    if output != Output::Text {
        let list: Vec<_> = profiles
            .profiles
            .iter()
            .map(|(name, p)| {
                json!({
                    "name": name,
                    "current": current == Some(name.as_str()),
                    "broker": p.broker,
                    "ca": p.ca,
                    "server_name": p.server_name,
                    "cert": p.cert,
                    "key": p.key,
                })
            })
            .collect();
        output.emit(&json!({ "current": current, "profiles": list }));
        return;
    }
    if profiles.profiles.is_empty() {
        println!(
            "no profiles; create one with `edgebus profile create NAME --broker HOST:PORT --ca FILE`"
        );
        return;
    }
    for (name, p) in &profiles.profiles {
        let mark = if current == Some(name.as_str()) {
            '*'
        } else {
            ' '
        };
        let mut line = format!("{mark} {name}");
        if let Some(b) = &p.broker {
            line.push_str(&format!("  broker={b}"));
        }
        if let Some(ca) = &p.ca {
            line.push_str(&format!("  ca={}", ca.display()));
        }
        if let Some(n) = &p.server_name {
            line.push_str(&format!("  server-name={n}"));
        }
        if let Some(c) = &p.cert {
            line.push_str(&format!("  cert={}", c.display()));
        }
        println!("{line}");
    }
}
