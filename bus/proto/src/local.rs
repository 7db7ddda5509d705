//! Where a broker on this machine keeps its data and its local CA, so that
//! `edgebus serve`, the command line and programs using the client agree
//! without flags.
//!
//! Pure: the environment is passed in, and nothing here touches a file.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The port a broker listens on by default.
pub const DEFAULT_PORT: u16 = 7171;

/// `$EDGEBUS_DATA`, else `$XDG_DATA_HOME/edgebus`, else
/// `~/.local/share/edgebus`, else `./edgebus-data`, looking variables up
/// with `var` (usually `std::env::var_os`).
pub fn default_data_dir(var: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    if let Some(dir) = var("EDGEBUS_DATA") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = var("XDG_DATA_HOME") {
        return PathBuf::from(dir).join("edgebus");
    }
    if let Some(home) = var("HOME") {
        return PathBuf::from(home).join(".local/share/edgebus");
    }
    PathBuf::from("edgebus-data")
}

/// Where a broker using `data_dir` keeps the certificates it makes itself.
pub fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

/// The local CA certificate of a broker using `data_dir`.
pub fn local_ca_path(data_dir: &Path) -> PathBuf {
    tls_dir(data_dir).join("ca.pem")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(vars: &'a [(&str, &str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn default_data_dir_prefers_edgebus_data_then_xdg_then_home() {
        let all = [
            ("EDGEBUS_DATA", "/d"),
            ("XDG_DATA_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(default_data_dir(lookup(&all)), PathBuf::from("/d"));
        assert_eq!(
            default_data_dir(lookup(&all[1..])),
            PathBuf::from("/x/edgebus")
        );
        assert_eq!(
            default_data_dir(lookup(&all[2..])),
            PathBuf::from("/h/.local/share/edgebus")
        );
        assert_eq!(default_data_dir(lookup(&[])), PathBuf::from("edgebus-data"));
    }
}
