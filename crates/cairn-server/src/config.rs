//! Server configuration, layered: defaults → TOML file → `CAIRN_*` environment → flags.
//!
//! Every layer above the defaults is a [`ConfigLayer`] (all fields optional), so the TOML file,
//! the environment and the command line speak the same field names and a later layer only
//! replaces what it sets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ServerError;

/// The effective configuration of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Address serving gRPC and HTTP on one port.
    pub listen: SocketAddr,
    /// Holds the SQLite database, the admin key, the master key and artifacts by default.
    pub data_dir: PathBuf,
    /// Empty: SQLite at `<data_dir>/cairn.db`. `sqlite:<path>` or `postgres://…` otherwise.
    pub database_url: String,
    /// How agents reach this server (`http://host:port`), used in the state backend address
    /// handed to runs; `None` means `http://<listen address>`.
    pub public_url: Option<String>,
    /// The largest Terraform state document the state backend accepts, in bytes.
    pub state_max_bytes: u64,
    /// A lease whose last heartbeat is older than this fails its run ("worker lost").
    pub lease_timeout: Duration,
    /// How often agents are asked to heartbeat.
    pub heartbeat_interval: Duration,
    /// Where encrypted workspaces are kept; `None` means `<data_dir>/artifacts`.
    pub artifact_dir: Option<PathBuf>,
    /// OTLP/gRPC collector for traces; `None` exports nothing.
    pub otlp_endpoint: Option<String>,
    /// Trigger policies create no more runs in a workflow that already has this many, so that
    /// a policy retriggering itself cannot loop forever.
    pub max_workflow_runs: u32,
    /// Evaluation samples kept per policy (the newest).
    pub policy_samples_kept: u32,
    /// The largest webhook body accepted (`/webhooks/…`), in bytes; larger ones get 413.
    pub webhook_max_bytes: u64,
    /// How often plain-Git repositories (local paths, `file://` URLs, GIT integrations without
    /// their own interval) are polled with `git ls-remote`.
    pub git_poll_interval: Duration,
    /// Plan/apply cycles a deployment run may take: a plan that still has changes in this
    /// cycle fails the run ("did not converge"). TOML `[deployments] max_cycles`.
    pub deployment_max_cycles: u32,
    /// The largest uploaded configuration (tar.gz) CreateConfigurationVersion accepts, in
    /// bytes. TOML `[deployments] upload_max_bytes`.
    pub deployment_upload_max_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            data_dir: PathBuf::from(".cairn"),
            database_url: String::new(),
            public_url: None,
            state_max_bytes: crate::state_backend::DEFAULT_MAX_STATE_BYTES,
            lease_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(5),
            artifact_dir: None,
            otlp_endpoint: None,
            max_workflow_runs: 100,
            policy_samples_kept: 100,
            webhook_max_bytes: crate::vcs::DEFAULT_WEBHOOK_MAX_BYTES,
            git_poll_interval: Duration::from_secs(2),
            deployment_max_cycles: 5,
            deployment_upload_max_bytes: crate::uploads::DEFAULT_UPLOAD_MAX_BYTES,
        }
    }
}

/// One layer of configuration: the TOML file, the environment, or flags. Unset fields leave the
/// layer below unchanged. Durations are written `30s`, `500ms`, `2m`, `1h` or a number of seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigLayer {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub public_url: Option<String>,
    pub state_max_bytes: Option<u64>,
    #[serde(default, with = "opt_duration")]
    pub lease_timeout: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    pub heartbeat_interval: Option<Duration>,
    pub artifact_dir: Option<PathBuf>,
    pub otlp_endpoint: Option<String>,
    pub max_workflow_runs: Option<u32>,
    pub policy_samples_kept: Option<u32>,
    pub webhook_max_bytes: Option<u64>,
    #[serde(default, with = "opt_duration")]
    pub git_poll_interval: Option<Duration>,
    #[serde(default)]
    pub deployments: Option<DeploymentsLayer>,
}

/// The `[deployments]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentsLayer {
    pub max_cycles: Option<u32>,
    pub upload_max_bytes: Option<u64>,
}

impl Config {
    /// Defaults, then `file` (if given), then the process environment, then `overrides`.
    pub fn load(file: Option<&Path>, overrides: ConfigLayer) -> Result<Config, ServerError> {
        Self::load_with_env(file, |k| std::env::var(k).ok(), overrides)
    }

    /// [`Config::load`] with an explicit environment lookup (for tests and embedding).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        overrides: ConfigLayer,
    ) -> Result<Config, ServerError> {
        let mut config = Config::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ServerError::Config(format!("reading {}: {e}", path.display())))?;
            config.apply(
                ConfigLayer::from_toml(&text)
                    .map_err(|e| ServerError::Config(format!("{}: {e}", path.display())))?,
            );
        }
        config.apply(ConfigLayer::from_env(env)?);
        config.apply(overrides);
        config.check()?;
        Ok(config)
    }

    /// Applies one layer on top of this configuration.
    pub fn apply(&mut self, layer: ConfigLayer) {
        let ConfigLayer {
            listen,
            data_dir,
            database_url,
            public_url,
            state_max_bytes,
            lease_timeout,
            heartbeat_interval,
            artifact_dir,
            otlp_endpoint,
            max_workflow_runs,
            policy_samples_kept,
            webhook_max_bytes,
            git_poll_interval,
            deployments,
        } = layer;
        if let Some(v) = listen {
            self.listen = v;
        }
        if let Some(v) = data_dir {
            self.data_dir = v;
        }
        if let Some(v) = database_url {
            self.database_url = v;
        }
        if let Some(v) = public_url {
            self.public_url = (!v.is_empty()).then_some(v);
        }
        if let Some(v) = state_max_bytes {
            self.state_max_bytes = v;
        }
        if let Some(v) = lease_timeout {
            self.lease_timeout = v;
        }
        if let Some(v) = heartbeat_interval {
            self.heartbeat_interval = v;
        }
        if let Some(v) = artifact_dir {
            self.artifact_dir = Some(v);
        }
        if let Some(v) = otlp_endpoint {
            // An empty value in a later layer switches export off again.
            self.otlp_endpoint = (!v.is_empty()).then_some(v);
        }
        if let Some(v) = max_workflow_runs {
            self.max_workflow_runs = v;
        }
        if let Some(v) = policy_samples_kept {
            self.policy_samples_kept = v;
        }
        if let Some(v) = webhook_max_bytes {
            self.webhook_max_bytes = v;
        }
        if let Some(v) = git_poll_interval {
            self.git_poll_interval = v;
        }
        if let Some(v) = deployments.as_ref().and_then(|d| d.max_cycles) {
            self.deployment_max_cycles = v;
        }
        if let Some(v) = deployments.and_then(|d| d.upload_max_bytes) {
            self.deployment_upload_max_bytes = v;
        }
    }

    fn check(&self) -> Result<(), ServerError> {
        if let Some(url) = &self.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ServerError::Config(
                    "public_url must start with http:// or https://".into(),
                ));
            }
        }
        if self.state_max_bytes == 0 {
            return Err(ServerError::Config(
                "state_max_bytes must be positive".into(),
            ));
        }
        if self.lease_timeout.is_zero() {
            return Err(ServerError::Config("lease_timeout must be positive".into()));
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval >= self.lease_timeout {
            return Err(ServerError::Config(
                "heartbeat_interval must be positive and shorter than lease_timeout".into(),
            ));
        }
        if self.max_workflow_runs == 0 {
            return Err(ServerError::Config(
                "max_workflow_runs must be positive".into(),
            ));
        }
        if self.deployment_upload_max_bytes == 0 {
            return Err(ServerError::Config(
                "deployments.upload_max_bytes must be positive".into(),
            ));
        }
        if self.deployment_max_cycles == 0 {
            return Err(ServerError::Config(
                "deployments.max_cycles must be positive".into(),
            ));
        }
        if self.policy_samples_kept == 0 {
            return Err(ServerError::Config(
                "policy_samples_kept must be positive".into(),
            ));
        }
        Ok(())
    }

    /// Where encrypted workspaces are kept.
    pub fn artifact_dir(&self) -> PathBuf {
        self.artifact_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("artifacts"))
    }

    /// The SQLite file used when `database_url` is empty.
    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join("cairn.db")
    }

    /// Written on first start with the secret of the bootstrap admin key.
    pub fn admin_key_path(&self) -> PathBuf {
        self.data_dir.join("admin.key")
    }

    /// Written on first start with the token of the `default` worker pool.
    pub fn default_pool_token_path(&self) -> PathBuf {
        self.data_dir.join("default-pool.token")
    }

    /// The key that wraps every run's workspace data key.
    pub fn master_key_path(&self) -> PathBuf {
        self.data_dir.join("master.key")
    }
}

impl ConfigLayer {
    pub fn from_toml(text: &str) -> Result<ConfigLayer, ServerError> {
        toml::from_str(text).map_err(|e| ServerError::Config(e.to_string()))
    }

    /// `CAIRN_LISTEN`, `CAIRN_DATA_DIR`, `CAIRN_DATABASE_URL`, `CAIRN_PUBLIC_URL`,
    /// `CAIRN_STATE_MAX_BYTES`, `CAIRN_LEASE_TIMEOUT`,
    /// `CAIRN_HEARTBEAT_INTERVAL`, `CAIRN_ARTIFACT_DIR`, `CAIRN_OTLP_ENDPOINT`,
    /// `CAIRN_MAX_WORKFLOW_RUNS`, `CAIRN_POLICY_SAMPLES_KEPT`, `CAIRN_WEBHOOK_MAX_BYTES`,
    /// `CAIRN_GIT_POLL_INTERVAL`, `CAIRN_DEPLOYMENTS_MAX_CYCLES`.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<ConfigLayer, ServerError> {
        let get = |name: &str| env(name).filter(|v| !v.is_empty() || name.ends_with("_URL"));
        let parse_err = |name: &str, e: String| ServerError::Config(format!("{name}: {e}"));
        Ok(ConfigLayer {
            listen: get("CAIRN_LISTEN")
                .map(|v| {
                    v.parse()
                        .map_err(|e| parse_err("CAIRN_LISTEN", format!("{e}")))
                })
                .transpose()?,
            data_dir: get("CAIRN_DATA_DIR").map(PathBuf::from),
            database_url: get("CAIRN_DATABASE_URL"),
            public_url: env("CAIRN_PUBLIC_URL"),
            state_max_bytes: get("CAIRN_STATE_MAX_BYTES")
                .map(|v| {
                    v.parse()
                        .map_err(|e| parse_err("CAIRN_STATE_MAX_BYTES", format!("{e}")))
                })
                .transpose()?,
            lease_timeout: get("CAIRN_LEASE_TIMEOUT")
                .map(|v| parse_duration(&v).map_err(|e| parse_err("CAIRN_LEASE_TIMEOUT", e)))
                .transpose()?,
            heartbeat_interval: get("CAIRN_HEARTBEAT_INTERVAL")
                .map(|v| parse_duration(&v).map_err(|e| parse_err("CAIRN_HEARTBEAT_INTERVAL", e)))
                .transpose()?,
            artifact_dir: get("CAIRN_ARTIFACT_DIR").map(PathBuf::from),
            otlp_endpoint: env("CAIRN_OTLP_ENDPOINT"),
            max_workflow_runs: get("CAIRN_MAX_WORKFLOW_RUNS")
                .map(|v| {
                    v.parse()
                        .map_err(|e| parse_err("CAIRN_MAX_WORKFLOW_RUNS", format!("{e}")))
                })
                .transpose()?,
            policy_samples_kept: get("CAIRN_POLICY_SAMPLES_KEPT")
                .map(|v| {
                    v.parse()
                        .map_err(|e| parse_err("CAIRN_POLICY_SAMPLES_KEPT", format!("{e}")))
                })
                .transpose()?,
            webhook_max_bytes: get("CAIRN_WEBHOOK_MAX_BYTES")
                .map(|v| {
                    v.parse()
                        .map_err(|e| parse_err("CAIRN_WEBHOOK_MAX_BYTES", format!("{e}")))
                })
                .transpose()?,
            git_poll_interval: get("CAIRN_GIT_POLL_INTERVAL")
                .map(|v| parse_duration(&v).map_err(|e| parse_err("CAIRN_GIT_POLL_INTERVAL", e)))
                .transpose()?,
            deployments: get("CAIRN_DEPLOYMENTS_MAX_CYCLES")
                .map(|v| {
                    v.parse()
                        .map(|n| DeploymentsLayer {
                            max_cycles: Some(n),
                            ..Default::default()
                        })
                        .map_err(|e| parse_err("CAIRN_DEPLOYMENTS_MAX_CYCLES", format!("{e}")))
                })
                .transpose()?,
        })
    }
}

/// Parses `30s`, `500ms`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 30s, 500ms, 2m)"))?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        other => return Err(format!("unknown duration unit {other:?} in {text:?}")),
    };
    Ok(d)
}

fn format_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::Secs(n)) => Ok(Some(Duration::from_secs(n))),
            Some(Raw::Text(t)) => super::parse_duration(&t)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\nlease_timeout = \"10s\"\ndata_dir = \"/var/lib/x\"\n",
        )
        .unwrap();
        let env: HashMap<&str, &str> = [
            ("CAIRN_LEASE_TIMEOUT", "20s"),
            ("CAIRN_DATABASE_URL", "postgres://db/cairn"),
        ]
        .into();
        let overrides = ConfigLayer {
            data_dir: Some("/tmp/flag".into()),
            ..Default::default()
        };
        let c = Config::load_with_env(
            Some(&file),
            |k| env.get(k).map(|v| v.to_string()),
            overrides,
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.lease_timeout, Duration::from_secs(20));
        assert_eq!(c.database_url, "postgres://db/cairn");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/flag"));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(c.artifact_dir(), PathBuf::from("/tmp/flag/artifacts"));
    }

    #[test]
    fn defaults_work_on_one_machine() {
        let c = Config::load_with_env(None, |_| None, ConfigLayer::default()).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.listen.to_string(), "127.0.0.1:7400");
        assert_eq!(c.sqlite_path(), PathBuf::from(".cairn/cairn.db"));
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(ConfigLayer::from_toml("lease_timeout = \"10 parsecs\"").is_err());
        assert!(ConfigLayer::from_toml("no_such_field = 1").is_err());
        let env = |k: &str| (k == "CAIRN_LISTEN").then(|| "not an address".to_string());
        assert!(Config::load_with_env(None, env, ConfigLayer::default()).is_err());
        let slow_heartbeat = ConfigLayer {
            heartbeat_interval: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        assert!(Config::load_with_env(None, |_| None, slow_heartbeat).is_err());
    }

    #[test]
    fn the_example_file_loads_and_shows_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/server.toml");
        let c = Config::load_with_env(Some(&path), |_| None, ConfigLayer::default()).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("s").is_err());
        let layer = ConfigLayer::from_toml("heartbeat_interval = 3").unwrap();
        assert_eq!(layer.heartbeat_interval, Some(Duration::from_secs(3)));
        let layer = ConfigLayer::from_toml("[deployments]\nmax_cycles = 3").unwrap();
        let mut c = Config::default();
        c.apply(layer);
        assert_eq!(c.deployment_max_cycles, 3);
        let layer = ConfigLayer::from_toml("[deployments]\nupload_max_bytes = 1024").unwrap();
        c.apply(layer);
        assert_eq!(
            (c.deployment_max_cycles, c.deployment_upload_max_bytes),
            (3, 1024),
            "a layer setting one key of the table keeps the other"
        );
        assert!(ConfigLayer::from_toml("[deployments]\nmax_cycle = 3").is_err());
    }
}
