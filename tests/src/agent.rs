//! A real `cairn agent` child process.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::server::{tail, terminate};
use crate::{paths, pb, Error, Result, TestServer};

#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Worker name; unique per test so that ListWorkers can tell agents apart.
    pub name: String,
    pub max_jobs: u32,
    pub otlp_endpoint: Option<String>,
    /// Extra environment for the agent (inherited by plugins and vendor CLIs).
    pub env: Vec<(String, OsString)>,
}

impl AgentOptions {
    pub fn named(name: &str) -> Self {
        AgentOptions {
            name: name.to_string(),
            max_jobs: 2,
            otlp_endpoint: None,
            env: Vec::new(),
        }
    }

    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }
}

/// `target/debug/cairn agent` in its own process group, with a temporary work directory. Its
/// output goes to `<tmp>/agent.log` ([`AgentProcess::log`]). Dropping it kills the whole group
/// (agent, plugins and vendor processes still attached to it).
pub struct AgentProcess {
    pub name: String,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl AgentProcess {
    pub fn spawn(server: &TestServer, opts: AgentOptions) -> Result<AgentProcess> {
        let cairn = paths::binary("cairn")?;
        // The plugins the agent launches by vendor name must have been built too.
        for plugin in [
            "cairn-runner-terraform",
            "cairn-runner-opentofu",
            "cairn-runner-ansible",
            "cairn-runner-pulumi",
        ] {
            paths::binary(plugin)?;
        }
        let dir = tempfile::tempdir().map_err(|e| Error::io("creating a temporary dir", e))?;
        let log = dir.path().join("agent.log");
        let out = std::fs::File::create(&log).map_err(|e| Error::io("creating agent.log", e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io("cloning agent.log", e))?;
        let plugin_path = std::env::join_paths([paths::debug_dir(), paths::python_runner_dir()])
            .map_err(|e| Error::Setup(format!("plugin path: {e}")))?;
        let mut cmd = Command::new(&cairn);
        cmd.arg("--server")
            .arg(server.url())
            .arg("agent")
            .arg("--token-file")
            .arg(&server.pool_token_file)
            .arg("--name")
            .arg(&opts.name)
            .arg("--work-dir")
            .arg(dir.path().join("work"))
            .arg("--max-jobs")
            .arg(opts.max_jobs.to_string())
            .envs(paths::vendor_env()?)
            .env("CAIRN_AGENT_PLUGIN_PATH", plugin_path)
            // A cancelled plugin gets a short grace so that stop tests do not wait long.
            .env("CAIRN_AGENT_CANCEL_GRACE", "5s")
            .env_remove("CAIRN_AGENT_CONFIG")
            .env_remove("CAIRN_AGENT_SERVER_URL")
            .env_remove("CAIRN_PROFILE")
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        if let Some(e) = &opts.otlp_endpoint {
            cmd.arg("--otlp-endpoint").arg(e);
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", cairn.display()), e))?;
        Ok(AgentProcess {
            name: opts.name,
            child,
            log,
            _dir: dir,
        })
    }

    /// Spawns the agent and waits until the server lists it as connected.
    pub async fn start(server: &TestServer, opts: AgentOptions) -> Result<AgentProcess> {
        let mut agent = Self::spawn(server, opts)?;
        agent.wait_connected(server).await?;
        Ok(agent)
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Waits until the server lists this agent as a connected worker of the default pool.
    pub async fn wait_connected(&mut self, server: &TestServer) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Error::Setup(format!(
                    "agent {} exited with {status}:\n{}",
                    self.name,
                    tail(&self.log)
                )));
            }
            let workers = server
                .pools()
                .list_workers(pb::ListWorkersRequest {
                    pool_id: "default".into(),
                })
                .await?
                .into_inner()
                .workers;
            if workers.iter().any(|w| w.name == self.name && w.connected) {
                return Ok(());
            }
            if started.elapsed() > crate::WAIT {
                return Err(Error::Timeout {
                    what: format!("agent {} to connect:\n{}", self.name, tail(&self.log)),
                    after: crate::WAIT,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL to the agent alone, as a crashed machine would: its plugins are not told.
    pub fn kill(&mut self) -> Result<()> {
        kill(self.pid(), Signal::SIGKILL)
            .map_err(|e| Error::Check(format!("SIGKILL {}: {e}", self.pid())))?;
        self.child
            .wait()
            .map_err(|e| Error::io("waiting for the killed agent", e))?;
        Ok(())
    }

    /// SIGTERM and wait: the graceful stop (flushes traces).
    pub async fn terminate(&mut self) -> Result<()> {
        terminate(&mut self.child).await
    }

    /// The agent's output so far (its logs and its plugins' stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // The group id is the agent's pid (process_group(0)); plugins stay in it.
        let _ = killpg(self.pid(), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}
