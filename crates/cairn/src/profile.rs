//! Profiles (`~/.config/cairn/profiles.toml`) and how the CLI decides which server and key to use.
//!
//! Layering, later wins: profile → `CAIRN_SERVER` / `CAIRN_API_KEY` → `--server` /
//! `--api-key-file`. When no profile exists at all, a `cairn dev` started in the current directory
//! is found through `./.cairn/admin.key` at the dev default address, so the first five minutes
//! need no login.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::CliError;

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7400";
pub const DEV_DATA_DIR: &str = ".cairn";
pub const ADMIN_KEY_FILE: &str = "admin.key";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Profile {
    pub server: String,
    pub api_key: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProfileFile {
    /// Profile used when `--profile` and `CAIRN_PROFILE` are not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// `$XDG_CONFIG_HOME/cairn/profiles.toml`, else `$HOME/.config/cairn/profiles.toml`.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("cairn").join("profiles.toml"))
}

impl ProfileFile {
    pub fn load(path: &Path) -> Result<ProfileFile, CliError> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| CliError::Profile {
                path: path.to_path_buf(),
                reason: one_line(&e.to_string()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ProfileFile::default()),
            Err(source) => Err(CliError::File {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Writes atomically with mode 0600: the file holds API keys.
    pub fn save(&self, path: &Path) -> Result<(), CliError> {
        let text = toml::to_string_pretty(self).map_err(|e| CliError::Profile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let file_err = |source| CliError::File {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(file_err)?;
        }
        let tmp = path.with_extension("toml.tmp");
        write_private(&tmp, text.as_bytes()).map_err(file_err)?;
        std::fs::rename(&tmp, path).map_err(file_err)?;
        Ok(())
    }
}

#[cfg(unix)]
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

#[cfg(not(unix))]
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, data)
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the user asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct ConnectionFlags {
    pub profile: Option<String>,
    pub server: Option<String>,
    pub api_key_file: Option<PathBuf>,
}

/// The environment variables that matter, passed in so resolution is testable.
#[derive(Debug, Clone, Default)]
pub struct ConnectionEnv {
    pub profile: Option<String>,
    pub server: Option<String>,
    pub api_key: Option<String>,
}

impl ConnectionEnv {
    pub fn from_process() -> ConnectionEnv {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        ConnectionEnv {
            profile: get("CAIRN_PROFILE"),
            server: get("CAIRN_SERVER"),
            api_key: get("CAIRN_API_KEY"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub server: String,
    /// None means "no key found"; calls that need one fail with a clear message.
    pub api_key: Option<String>,
}

/// Resolves server and key. `cwd` is where `.cairn/admin.key` is looked for.
pub fn resolve(
    flags: &ConnectionFlags,
    env: &ConnectionEnv,
    file: &ProfileFile,
    file_path: Option<&Path>,
    cwd: &Path,
) -> Result<Connection, CliError> {
    let wanted = flags
        .profile
        .clone()
        .or_else(|| env.profile.clone())
        .or_else(|| file.current.clone());
    let explicit = flags.profile.is_some() || env.profile.is_some();
    let profile = match &wanted {
        Some(name) => match file.profiles.get(name) {
            Some(p) => Some(p.clone()),
            None if explicit => {
                let known: Vec<&str> = file.profiles.keys().map(String::as_str).collect();
                return Err(CliError::Invalid(format!(
                    "no profile named {name:?} in {} (known: {}); create it with `cairn login --profile {name} --server URL`",
                    file_path.map(|p| p.display().to_string()).unwrap_or_else(|| "the profile file".into()),
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                )));
            }
            None => None,
        },
        None => None,
    };
    let mut server = profile.as_ref().map(|p| p.server.clone());
    let mut api_key = profile
        .as_ref()
        .map(|p| p.api_key.clone())
        .filter(|k| !k.is_empty());
    if let Some(s) = &env.server {
        server = Some(s.clone());
    }
    if let Some(k) = &env.api_key {
        api_key = Some(k.clone());
    }
    if let Some(s) = &flags.server {
        server = Some(s.clone());
    }
    if let Some(path) = &flags.api_key_file {
        api_key = Some(read_key_file(path)?);
    }
    let server = server.unwrap_or_else(|| DEFAULT_SERVER.to_string());
    if api_key.is_none() && profile.is_none() {
        // `cairn dev` writes its admin key here; only trust it for the dev default address so
        // that a key never leaks to a server the user pointed at explicitly.
        let dev_key = cwd.join(DEV_DATA_DIR).join(ADMIN_KEY_FILE);
        if normalize(&server) == normalize(DEFAULT_SERVER) && dev_key.is_file() {
            api_key = Some(read_key_file(&dev_key)?);
        }
    }
    Ok(Connection {
        server: normalize(&server),
        api_key,
    })
}

/// Adds `http://` when the scheme is missing (people type `localhost:7400`) and drops a
/// trailing slash so that profile keys and error messages look the same everywhere.
pub fn normalize(server: &str) -> String {
    let s = server.trim().trim_end_matches('/');
    if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    }
}

pub fn read_key_file(path: &Path) -> Result<String, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::File {
        path: path.to_path_buf(),
        source,
    })?;
    let key = text.trim();
    if key.is_empty() {
        return Err(CliError::Invalid(format!(
            "{} is empty: expected an API key",
            path.display()
        )));
    }
    Ok(key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(profiles: &[(&str, &str, &str)], current: Option<&str>) -> ProfileFile {
        ProfileFile {
            current: current.map(String::from),
            profiles: profiles
                .iter()
                .map(|(n, s, k)| {
                    (
                        n.to_string(),
                        Profile {
                            server: s.to_string(),
                            api_key: k.to_string(),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn env_overrides_profile_and_flags_override_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = file_with(&[("prod", "https://prod:1", "pk")], Some("prod"));
        let env = ConnectionEnv {
            server: Some("http://env:2".into()),
            ..Default::default()
        };
        let c = resolve(&Default::default(), &env, &file, None, dir.path()).unwrap();
        assert_eq!(c.server, "http://env:2");
        assert_eq!(c.api_key.as_deref(), Some("pk"));

        let key = dir.path().join("k");
        std::fs::write(&key, "flagkey\n").unwrap();
        let flags = ConnectionFlags {
            server: Some("flag:3".into()),
            api_key_file: Some(key),
            ..Default::default()
        };
        let c = resolve(&flags, &env, &file, None, dir.path()).unwrap();
        assert_eq!(c.server, "http://flag:3");
        assert_eq!(c.api_key.as_deref(), Some("flagkey"));
    }

    #[test]
    fn profile_chosen_by_flag_then_env_then_current() {
        let dir = tempfile::tempdir().unwrap();
        let file = file_with(
            &[("a", "http://a", "ka"), ("b", "http://b", "kb")],
            Some("a"),
        );
        let c = resolve(
            &Default::default(),
            &Default::default(),
            &file,
            None,
            dir.path(),
        )
        .unwrap();
        assert_eq!(c.server, "http://a");
        let env = ConnectionEnv {
            profile: Some("b".into()),
            ..Default::default()
        };
        let c = resolve(&Default::default(), &env, &file, None, dir.path()).unwrap();
        assert_eq!(c.server, "http://b");
        let flags = ConnectionFlags {
            profile: Some("a".into()),
            ..Default::default()
        };
        let c = resolve(&flags, &env, &file, None, dir.path()).unwrap();
        assert_eq!(c.api_key.as_deref(), Some("ka"));
    }

    #[test]
    fn unknown_explicit_profile_is_an_input_error() {
        let dir = tempfile::tempdir().unwrap();
        let flags = ConnectionFlags {
            profile: Some("nope".into()),
            ..Default::default()
        };
        let e = resolve(
            &flags,
            &Default::default(),
            &ProfileFile::default(),
            None,
            dir.path(),
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), crate::error::exit::INVALID);
        assert!(e.to_string().contains("cairn login --profile nope"));
    }

    #[test]
    fn dev_admin_key_used_only_without_profile_and_for_the_dev_address() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".cairn")).unwrap();
        std::fs::write(dir.path().join(".cairn/admin.key"), "devkey\n").unwrap();
        let none = ProfileFile::default();
        let c = resolve(
            &Default::default(),
            &Default::default(),
            &none,
            None,
            dir.path(),
        )
        .unwrap();
        assert_eq!(c.server, DEFAULT_SERVER);
        assert_eq!(c.api_key.as_deref(), Some("devkey"));

        let env = ConnectionEnv {
            server: Some("http://elsewhere:7400".into()),
            ..Default::default()
        };
        let c = resolve(&Default::default(), &env, &none, None, dir.path()).unwrap();
        assert_eq!(c.api_key, None);

        let with_profile = file_with(&[("p", DEFAULT_SERVER, "")], Some("p"));
        let c = resolve(
            &Default::default(),
            &Default::default(),
            &with_profile,
            None,
            dir.path(),
        )
        .unwrap();
        assert_eq!(c.api_key, None);
    }

    #[test]
    fn profile_file_round_trips_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/profiles.toml");
        let file = file_with(&[("a", "http://a", "ka")], Some("a"));
        file.save(&path).unwrap();
        assert_eq!(ProfileFile::load(&path).unwrap(), file);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(
            ProfileFile::load(&dir.path().join("missing.toml")).unwrap(),
            ProfileFile::default()
        );
    }
}
