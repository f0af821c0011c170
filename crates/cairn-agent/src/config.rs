use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Control plane address used when none is configured.
pub const DEFAULT_SERVER_URL: &str = "http://127.0.0.1:7400";

/// How the agent connects, what it advertises and where it works.
///
/// Sources, later ones winning: [`Config::default`], a TOML file ([`Config::from_toml_file`]),
/// `CAIRN_AGENT_*` environment variables ([`Config::apply_env`]); the `cairn agent` command adds
/// its flags on top by setting fields. Durations in files and the environment are written
/// `500ms`, `30s`, `5m` or `1h` (a bare number means seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC address of the control plane (`http://host:port`; TLS is not built in yet).
    pub server_url: String,
    /// The worker pool's token. Prefer `pool_token_file` outside of development.
    pub pool_token: Option<String>,
    /// File holding the pool token (surrounding whitespace ignored); wins over `pool_token`.
    pub pool_token_file: Option<PathBuf>,
    /// Stable worker name; the host name by default.
    pub name: String,
    pub labels: Vec<String>,
    /// Jobs run at once.
    pub max_jobs: u32,
    /// Directories searched, in order, for `cairn-runner-<vendor>` plugins.
    pub plugin_path: Vec<PathBuf>,
    /// Repository caches (`repos/`) and per-job work trees (`jobs/`, emptied when the agent
    /// starts). One per agent process: two agents must not share it.
    pub work_dir: PathBuf,
    /// How long a plugin may take to print its handshake line.
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// How long a cancelled plugin gets to stop its vendor process before it is killed.
    #[serde(with = "duration")]
    pub cancel_grace: Duration,
    /// First delay before reconnecting; doubles (with jitter) up to `reconnect_max`.
    #[serde(with = "duration")]
    pub reconnect_min: Duration,
    #[serde(with = "duration")]
    pub reconnect_max: Duration,
    /// Keep each job's work tree after the job (for debugging); removed by default.
    pub keep_work_trees: bool,
    /// OTLP/gRPC collector the agent exports to; handed to every runner plugin (as
    /// `CAIRN_OTLP_ENDPOINT`) so that the plugin's spans join the run's trace.
    pub otlp_endpoint: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server_url: DEFAULT_SERVER_URL.to_owned(),
            pool_token: None,
            pool_token_file: None,
            name: default_name(),
            labels: Vec::new(),
            max_jobs: 2,
            plugin_path: default_plugin_path(),
            work_dir: std::env::temp_dir().join("cairn-agent"),
            handshake_timeout: Duration::from_secs(30),
            cancel_grace: Duration::from_secs(30),
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            keep_work_trees: false,
            otlp_endpoint: None,
        }
    }
}

fn default_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "cairn-agent".to_owned())
}

/// Plugins installed next to the agent's own binary are found without configuration.
fn default_plugin_path() -> Vec<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .into_iter()
        .collect()
}

impl Config {
    pub fn from_toml_str(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::Config(e.to_string()))
    }

    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigFile {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| Error::ConfigParse {
            path: path.to_owned(),
            source,
        })
    }

    /// Defaults, then the file if given, then the process environment.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let mut config = match path {
            Some(path) => Self::from_toml_file(path)?,
            None => Self::default(),
        };
        config.apply_env(std::env::vars())?;
        Ok(config)
    }

    /// Applies `CAIRN_AGENT_*` variables: `SERVER_URL`, `POOL_TOKEN`, `POOL_TOKEN_FILE`, `NAME`,
    /// `LABELS` (comma-separated), `MAX_JOBS`, `PLUGIN_PATH` (colon-separated), `WORK_DIR`,
    /// `HANDSHAKE_TIMEOUT`, `CANCEL_GRACE`, `OTLP_ENDPOINT`.
    pub fn apply_env<I, K, V>(&mut self, vars: I) -> Result<()>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        for (key, value) in vars {
            let Some(key) = key.as_ref().strip_prefix("CAIRN_AGENT_") else {
                continue;
            };
            let value = value.as_ref();
            match key {
                "SERVER_URL" => self.server_url = value.to_owned(),
                "POOL_TOKEN" => self.pool_token = Some(value.to_owned()),
                "POOL_TOKEN_FILE" => self.pool_token_file = Some(PathBuf::from(value)),
                "NAME" => self.name = value.to_owned(),
                "LABELS" => {
                    self.labels = value
                        .split(',')
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned)
                        .collect();
                }
                "MAX_JOBS" => {
                    self.max_jobs = value.trim().parse().map_err(|_| {
                        Error::Config(format!("CAIRN_AGENT_MAX_JOBS={value:?} is not a number"))
                    })?;
                }
                "PLUGIN_PATH" => self.plugin_path = std::env::split_paths(value).collect(),
                "WORK_DIR" => self.work_dir = PathBuf::from(value),
                "HANDSHAKE_TIMEOUT" => self.handshake_timeout = env_duration(key, value)?,
                "CANCEL_GRACE" => self.cancel_grace = env_duration(key, value)?,
                "OTLP_ENDPOINT" => {
                    self.otlp_endpoint = Some(value.to_owned()).filter(|v| !v.trim().is_empty());
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Checks the settings and reads the pool token.
    pub(crate) fn validate(&self) -> Result<String> {
        if self.server_url.starts_with("https://") {
            // tonic is built without a TLS stack in this workspace.
            return Err(Error::Config(format!(
                "server_url `{}`: TLS is not built into the agent yet; use http:// (behind a \
                 TLS-terminating proxy or on a private network)",
                self.server_url
            )));
        }
        if !self.server_url.starts_with("http://") {
            return Err(Error::Config(format!(
                "server_url `{}` must start with http://",
                self.server_url
            )));
        }
        if self.max_jobs == 0 {
            return Err(Error::Config("max_jobs must be at least 1".into()));
        }
        if self.name.trim().is_empty() {
            return Err(Error::Config("name must not be empty".into()));
        }
        if self.reconnect_min.is_zero() || self.reconnect_min > self.reconnect_max {
            return Err(Error::Config(
                "reconnect_min must be positive and at most reconnect_max".into(),
            ));
        }
        let token = match (&self.pool_token_file, &self.pool_token) {
            (Some(path), _) => std::fs::read_to_string(path)
                .map_err(|source| Error::TokenFile {
                    path: path.clone(),
                    source,
                })?
                .trim()
                .to_owned(),
            (None, Some(token)) => token.trim().to_owned(),
            (None, None) => String::new(),
        };
        if token.is_empty() {
            return Err(Error::Config(
                "no pool token: set pool_token_file or pool_token".into(),
            ));
        }
        Ok(token)
    }
}

fn env_duration(key: &str, value: &str) -> Result<Duration> {
    duration::parse(value).map_err(|e| Error::Config(format!("CAIRN_AGENT_{key}: {e}")))
}

/// `30s`-style durations for serde.
pub mod duration {
    use std::time::Duration;

    use serde::{de, Deserialize, Deserializer, Serializer};

    /// Parses `250ms`, `30s`, `5m`, `1h` or a bare number of seconds.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let n: u64 = number
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: expected e.g. 30s, 500ms, 5m"))?;
        match unit.trim() {
            "ms" => Ok(Duration::from_millis(n)),
            "" | "s" => Ok(Duration::from_secs(n)),
            "m" => Ok(Duration::from_secs(n * 60)),
            "h" => Ok(Duration::from_secs(n * 3600)),
            other => Err(format!(
                "invalid duration unit {other:?} in {text:?}: use ms, s, m or h"
            )),
        }
    }

    pub fn format(d: Duration) -> String {
        if d.subsec_millis() != 0 || d.as_secs() == 0 {
            format!("{}ms", d.as_millis())
        } else {
            format!("{}s", d.as_secs())
        }
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Seconds(s) => Ok(Duration::from_secs(s)),
            Raw::Text(t) => parse(&t).map_err(de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_env_and_defaults_layer() {
        let mut config = Config::from_toml_str(
            r#"
            server_url = "http://cairn.example.invalid:7400"
            pool_token = "abc"
            labels = ["linux"]
            handshake_timeout = "5s"
            cancel_grace = 12
            "#,
        )
        .unwrap();
        assert_eq!(config.max_jobs, 2);
        assert_eq!(config.handshake_timeout, Duration::from_secs(5));
        assert_eq!(config.cancel_grace, Duration::from_secs(12));
        config
            .apply_env([
                ("CAIRN_AGENT_MAX_JOBS", "4"),
                ("CAIRN_AGENT_LABELS", "a, b"),
                ("CAIRN_AGENT_CANCEL_GRACE", "250ms"),
                ("CAIRN_AGENT_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
                ("UNRELATED", "x"),
            ])
            .unwrap();
        assert_eq!(config.max_jobs, 4);
        assert_eq!(
            config.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4317")
        );
        assert_eq!(config.labels, ["a", "b"]);
        assert_eq!(config.cancel_grace, Duration::from_millis(250));
        assert_eq!(config.validate().unwrap(), "abc");
    }

    #[test]
    fn rejects_bad_values() {
        assert!(Config::from_toml_str("max_job = 3").is_err());
        assert!(Config::from_toml_str("cancel_grace = \"3 parsecs\"").is_err());
        let config = Config {
            pool_token: None,
            ..Config::default()
        };
        assert!(matches!(config.validate(), Err(Error::Config(_))));
        let config = Config {
            server_url: "127.0.0.1:1".into(),
            pool_token: Some("t".into()),
            ..Config::default()
        };
        assert!(matches!(config.validate(), Err(Error::Config(_))));
    }

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/agent.toml");
        let config = Config::from_toml_file(&path).unwrap();
        assert_eq!(config.max_jobs, 2);
        assert!(config.pool_token_file.is_some());
    }
}
