//! A real control plane: in this process, or as a `cairn server` child process.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_proto::v1::deployment_service_client::DeploymentServiceClient;
use cairn_proto::v1::run_service_client::RunServiceClient;
use cairn_proto::v1::stack_service_client::StackServiceClient;
use cairn_proto::v1::system_service_client::SystemServiceClient;
use cairn_proto::v1::worker_pool_service_client::WorkerPoolServiceClient;
use tokio::sync::oneshot;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::{paths, Error, Result};

/// Sends an API key as `authorization: Bearer <key>`.
#[derive(Clone)]
pub struct Bearer(String);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let value = format!("Bearer {}", self.0)
            .parse()
            .map_err(|_| tonic::Status::internal("API key is not a valid header value"))?;
        req.metadata_mut().insert("authorization", value);
        Ok(req)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Short in tests that lose workers on purpose.
    pub lease_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub otlp_endpoint: Option<String>,
    /// Empty: SQLite in the temporary data directory.
    pub database_url: String,
    /// `[deployments] max_cycles` (in-process servers only).
    pub deployment_max_cycles: u32,
    /// `[deployments] upload_max_bytes` (in-process servers only).
    pub deployment_upload_max_bytes: u64,
    /// How often local repositories are polled for new commits (in-process servers only).
    pub git_poll_interval: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            lease_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(2),
            otlp_endpoint: None,
            database_url: String::new(),
            deployment_max_cycles: cairn_server::Config::default().deployment_max_cycles,
            deployment_upload_max_bytes: cairn_server::Config::default()
                .deployment_upload_max_bytes,
            git_poll_interval: cairn_server::Config::default().git_poll_interval,
        }
    }
}

impl ServerOptions {
    /// A short lease: a lost worker fails its run after about `timeout`.
    pub fn with_lease_timeout(timeout: Duration) -> Self {
        ServerOptions {
            lease_timeout: timeout,
            heartbeat_interval: timeout / 4,
            ..Default::default()
        }
    }
}

enum Kind {
    InProcess {
        stop: Option<oneshot::Sender<()>>,
        handle: Option<tokio::task::JoinHandle<Result<(), cairn_server::ServerError>>>,
    },
    Process {
        child: Child,
        log: PathBuf,
    },
}

/// A running control plane with the bootstrap admin key and default pool token it wrote.
pub struct TestServer {
    pub addr: SocketAddr,
    pub admin_key: String,
    pub pool_token_file: PathBuf,
    pub data_dir: PathBuf,
    pub channel: Channel,
    kind: Kind,
    // Last: removed after the server is gone.
    _dir: tempfile::TempDir,
}

fn read_secret(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))
}

impl TestServer {
    /// A server in this process on `127.0.0.1:0`.
    pub async fn start(opts: ServerOptions) -> Result<TestServer> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("creating a temporary dir", e))?;
        let data_dir = dir.path().join("data");
        let config = cairn_server::Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.clone(),
            database_url: opts.database_url.clone(),
            lease_timeout: opts.lease_timeout,
            heartbeat_interval: opts.heartbeat_interval,
            otlp_endpoint: opts.otlp_endpoint.clone(),
            deployment_max_cycles: opts.deployment_max_cycles,
            deployment_upload_max_bytes: opts.deployment_upload_max_bytes,
            git_poll_interval: opts.git_poll_interval,
            ..cairn_server::Config::default()
        };
        let server = cairn_server::Server::builder(config).build().await?;
        let listener = server.bind().await?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the server address", e))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            server
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
        });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .map_err(|e| Error::Setup(format!("server URL: {e}")))?
            .connect()
            .await?;
        Ok(TestServer {
            addr,
            admin_key: read_secret(&data_dir.join("admin.key"))?,
            pool_token_file: data_dir.join("default-pool.token"),
            data_dir,
            channel,
            kind: Kind::InProcess {
                stop: Some(stop),
                handle: Some(handle),
            },
            _dir: dir,
        })
    }

    /// A `cairn server` child process (target/debug/cairn), e.g. to export traces from its own
    /// process or to kill it. Its output goes to `<tmp>/server.log`.
    pub async fn spawn(opts: ServerOptions) -> Result<TestServer> {
        let cairn = paths::binary("cairn")?;
        let dir = tempfile::tempdir().map_err(|e| Error::io("creating a temporary dir", e))?;
        let data_dir = dir.path().join("data");
        let log = dir.path().join("server.log");
        let addr = free_port()?;
        let out = std::fs::File::create(&log).map_err(|e| Error::io("creating server.log", e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io("cloning server.log", e))?;
        let mut cmd = Command::new(&cairn);
        cmd.arg("server")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(&data_dir)
            .env(
                "CAIRN_LEASE_TIMEOUT",
                format!("{}ms", opts.lease_timeout.as_millis()),
            )
            .env(
                "CAIRN_HEARTBEAT_INTERVAL",
                format!("{}ms", opts.heartbeat_interval.as_millis()),
            )
            .env_remove("CAIRN_CONFIG")
            .env_remove("CAIRN_DATA_DIR")
            .env_remove("CAIRN_LISTEN")
            .env_remove("CAIRN_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        if opts.database_url.is_empty() {
            cmd.env_remove("CAIRN_DATABASE_URL");
        } else {
            cmd.arg("--database-url").arg(&opts.database_url);
        }
        if let Some(e) = &opts.otlp_endpoint {
            cmd.arg("--otlp-endpoint").arg(e);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", cairn.display()), e))?;
        let started = Instant::now();
        let channel = loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Error::Setup(format!(
                    "cairn server exited with {status} before serving:\n{}",
                    tail(&log)
                )));
            }
            if data_dir.join("default-pool.token").exists() {
                if let Ok(ch) = Channel::from_shared(format!("http://{addr}"))
                    .map_err(|e| Error::Setup(format!("server URL: {e}")))?
                    .connect()
                    .await
                {
                    break ch;
                }
            }
            if started.elapsed() > crate::WAIT {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Timeout {
                    what: format!("cairn server on {addr}:\n{}", tail(&log)),
                    after: crate::WAIT,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Ok(TestServer {
            addr,
            admin_key: read_secret(&data_dir.join("admin.key"))?,
            pool_token_file: data_dir.join("default-pool.token"),
            data_dir,
            channel,
            kind: Kind::Process { child, log },
            _dir: dir,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn authed(&self) -> Authed {
        InterceptedService::new(self.channel.clone(), Bearer(self.admin_key.clone()))
    }

    /// Clients authenticated with the admin key.
    pub fn stacks(&self) -> StackServiceClient<Authed> {
        StackServiceClient::new(self.authed())
    }

    pub fn runs(&self) -> RunServiceClient<Authed> {
        RunServiceClient::new(self.authed())
    }

    pub fn deployments(&self) -> DeploymentServiceClient<Authed> {
        DeploymentServiceClient::new(self.authed())
    }

    pub fn pools(&self) -> WorkerPoolServiceClient<Authed> {
        WorkerPoolServiceClient::new(self.authed())
    }

    pub fn system(&self) -> SystemServiceClient<Authed> {
        SystemServiceClient::new(self.authed())
    }

    /// The child process's output so far (empty for an in-process server).
    pub fn log(&self) -> String {
        match &self.kind {
            Kind::Process { log, .. } => std::fs::read_to_string(log).unwrap_or_default(),
            Kind::InProcess { .. } => String::new(),
        }
    }

    /// Stops the server gracefully (SIGTERM for a child) and waits for it.
    pub async fn stop(mut self) -> Result<()> {
        match &mut self.kind {
            Kind::InProcess { stop, handle } => {
                if let Some(s) = stop.take() {
                    let _ = s.send(());
                }
                if let Some(h) = handle.take() {
                    h.await
                        .map_err(|e| Error::Check(format!("server task failed: {e}")))??;
                }
            }
            Kind::Process { child, .. } => terminate(child).await?,
        }
        Ok(())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        match &mut self.kind {
            Kind::InProcess { stop, .. } => {
                if let Some(s) = stop.take() {
                    let _ = s.send(());
                }
            }
            Kind::Process { child, .. } => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A port nobody listens on right now. Another process could take it before the server binds;
/// on a test machine that is rare enough, and the server then fails loudly.
fn free_port() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::io("binding 127.0.0.1:0", e))?;
    l.local_addr()
        .map_err(|e| Error::io("reading a free port", e))
}

/// The last lines of a log file, for error messages.
pub(crate) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(60);
    lines[start..].join("\n")
}

/// SIGTERM, then wait for the exit (SIGKILL if it does not come within a minute).
pub(crate) async fn terminate(child: &mut Child) -> Result<()> {
    if child.try_wait().ok().flatten().is_some() {
        return Ok(());
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return Ok(()),
            Ok(None) if started.elapsed() > Duration::from_secs(60) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Check(format!(
                    "process {pid} ignored SIGTERM for a minute and was killed"
                )));
            }
            Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => return Err(Error::io("waiting for a child", e)),
        }
    }
}
