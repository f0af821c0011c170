use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_proto::runner::v1::runner_service_client::RunnerServiceClient;
use hyper_util::rt::TokioIo;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, ChildStdin, Command};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::{Error, Handshake};

const STDERR_TAIL_LINES: usize = 30;

/// Receives every stderr line of a plugin.
pub type StderrCallback = Arc<dyn Fn(&str) + Send + Sync>;

/// The executable name of a vendor's plugin: `cairn-runner-<vendor>`.
pub fn plugin_binary_name(vendor: &str) -> String {
    format!("cairn-runner-{vendor}")
}

/// Finds `cairn-runner-<vendor>` in the first directory of `dirs` that holds an executable of
/// that name.
pub fn find_plugin(vendor: &str, dirs: &[PathBuf]) -> Result<PathBuf, Error> {
    let binary = plugin_binary_name(vendor);
    dirs.iter()
        .map(|dir| dir.join(&binary))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .ok_or_else(|| Error::PluginNotFound {
            binary,
            dirs: dirs.to_vec(),
        })
}

/// How to start a plugin.
#[derive(Clone)]
pub struct LaunchOptions {
    pub handshake_timeout: Duration,
    /// Extra environment for the plugin process.
    pub env: Vec<(OsString, OsString)>,
    /// Where the plugin's stderr goes; by default, `tracing` at info level.
    pub on_stderr: StderrCallback,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(30),
            env: Vec::new(),
            on_stderr: Arc::new(
                |line| tracing::info!(target: "cairn_runner_sdk::plugin", "{line}"),
            ),
        }
    }
}

impl std::fmt::Debug for LaunchOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchOptions")
            .field("handshake_timeout", &self.handshake_timeout)
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

/// A running, connected plugin. Dropping it terminates the plugin's process group.
#[derive(Debug)]
pub struct PluginHandle {
    pub client: RunnerServiceClient<Channel>,
    pub handshake: Handshake,
    child: Child,
    stdin: Option<ChildStdin>,
    pgid: Option<Pid>,
}

impl PluginHandle {
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Asks the plugin to stop (closes its stdin), then kills it if it has not exited within
    /// `grace`.
    pub async fn shutdown(mut self, grace: Duration) -> Result<std::process::ExitStatus, Error> {
        drop(self.stdin.take());
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status?,
            Err(_) => {
                self.signal(Signal::SIGKILL);
                self.child.wait().await?
            }
        };
        self.pgid = None;
        Ok(status)
    }

    fn signal(&self, signal: Signal) {
        if let Some(pgid) = self.pgid {
            let _ = killpg(pgid, signal);
        }
    }
}

impl Drop for PluginHandle {
    fn drop(&mut self) {
        // SIGTERM lets the plugin stop its vendor processes and remove its socket directory.
        self.signal(Signal::SIGTERM);
    }
}

/// Starts the plugin at `binary`, waits for its handshake, connects and checks its health.
pub async fn launch(binary: &Path, options: LaunchOptions) -> Result<PluginHandle, Error> {
    let name = binary.display().to_string();
    let mut cmd = Command::new(binary);
    cmd.envs(options.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        program: name.clone(),
        source,
    })?;
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    // A launch that fails half-way must not leak the partially started plugin.
    let mut failed_launch = KillOnDrop(pgid);

    let tail = Arc::new(Mutex::new(VecDeque::<String>::new()));
    let stderr_done = {
        let stderr = child.stderr.take();
        let tail = Arc::clone(&tail);
        let on_stderr = Arc::clone(&options.on_stderr);
        tokio::spawn(async move {
            let Some(stderr) = stderr else { return };
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                on_stderr(&line);
                let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                if tail.len() == STDERR_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        })
    };

    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::Io(std::io::Error::other("plugin stdout was not captured")))?;
    let mut stdout = BufReader::new(stdout);
    let mut line = String::new();
    let read = tokio::time::timeout(options.handshake_timeout, stdout.read_line(&mut line)).await;
    let handshake = match read {
        Err(_) => {
            return Err(Error::HandshakeTimeout {
                plugin: name,
                timeout: options.handshake_timeout,
            })
        }
        Ok(Err(e)) => return Err(Error::Io(e)),
        Ok(Ok(0)) => {
            // EOF before any line: the plugin died. Its stderr explains why.
            let status = child.wait().await?;
            let _ = tokio::time::timeout(Duration::from_secs(5), stderr_done).await;
            let tail = tail.lock().unwrap_or_else(|e| e.into_inner());
            return Err(Error::PluginExited {
                plugin: name,
                status: status.to_string(),
                stderr_tail: tail.iter().cloned().collect::<Vec<_>>().join("\n"),
            });
        }
        Ok(Ok(_)) => Handshake::parse(&line)?,
    };
    // Anything the plugin prints on stdout later is not part of the protocol; drain it so a
    // chatty plugin cannot block on a full pipe.
    tokio::spawn(async move {
        let mut sink = tokio::io::sink();
        let _ = tokio::io::copy(&mut stdout, &mut sink).await;
    });

    let channel = connect_unix(&handshake.socket).await?;
    let mut health = HealthClient::new(channel.clone());
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner()
        .status;
    if status != ServingStatus::Serving as i32 {
        return Err(Error::NotServing(status));
    }

    let stdin = child.stdin.take();
    failed_launch.0 = None;
    Ok(PluginHandle {
        client: RunnerServiceClient::new(channel),
        handshake,
        child,
        stdin,
        pgid,
    })
}

struct KillOnDrop(Option<Pid>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

/// Connects a tonic channel over a unix socket (the URI is a placeholder the connector ignores).
pub(crate) async fn connect_unix(socket: &Path) -> Result<Channel, Error> {
    let socket = socket.to_owned();
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await?;
    Ok(channel)
}
