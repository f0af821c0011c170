//! A minimal in-test control plane (a real tonic `AgentService` on 127.0.0.1), real git
//! repositories and helpers to run the real agent against them.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_agent::Config;
use cairn_proto::agent::v1::agent_service_server::{AgentService, AgentServiceServer};
use cairn_proto::agent::v1::{
    job_event, session_request, session_response, CancelJob, DownloadWorkspaceRequest,
    DownloadWorkspaceResponse, Heartbeat, JobEvent, JobKind, Lease, ProceedJob, Register,
    Registered, SessionRequest, SessionResponse, UploadWorkspaceRequest, UploadWorkspaceResponse,
};
use cairn_proto::v1::LogLine;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

pub const TOKEN: &str = "pool-token-for-tests";
pub const RUN_KEY: [u8; 32] = [42; 32];
/// Guards against a hung test; no assertion depends on how fast anything is.
const WAIT_LIMIT: Duration = Duration::from_secs(120);

/// How the fake control plane corrupts downloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    None,
    /// Flip a byte but announce the original sha256.
    Bytes,
    /// Flip a byte and announce the sha256 of the flipped bytes (only AES-GCM can tell).
    BytesAndDigest,
}

#[derive(Debug)]
pub struct State {
    pub registrations: Vec<Register>,
    pub heartbeats: Vec<Heartbeat>,
    pub events: Vec<JobEvent>,
    pub artifacts: HashMap<String, Vec<u8>>,
    pub tamper: Tamper,
    /// Announced in Registered; a PLAN_AND_APPLY job waits this long for ProceedJob.
    pub lease_timeout_ms: i64,
    /// What arrived on sessions, in order: `register`, `heartbeat:<ids,>`, `event:<lease>`.
    pub order: Vec<String>,
}

type SessionSender = mpsc::Sender<Result<SessionResponse, Status>>;

#[derive(Clone)]
pub struct Plane {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
    current: Arc<Mutex<Option<SessionSender>>>,
    kill: CancellationToken,
    server: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

#[tonic::async_trait]
impl AgentService for Plane {
    type SessionStream = ReceiverStream<Result<SessionResponse, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let plane = self.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    () = plane.kill.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("control plane restarting"))).await;
                        break;
                    }
                    m = inbound.message() => m,
                };
                let Ok(Some(message)) = message else { break };
                match message.message {
                    Some(session_request::Message::Register(register)) => {
                        if register.pool_token != TOKEN {
                            let _ = tx
                                .send(Err(Status::unauthenticated("bad pool token")))
                                .await;
                            break;
                        }
                        let lease_timeout_ms = {
                            let mut state = plane.state.lock().unwrap();
                            state.registrations.push(register);
                            state.order.push("register".into());
                            state.lease_timeout_ms
                        };
                        let _ = tx
                            .send(Ok(SessionResponse {
                                message: Some(session_response::Message::Registered(Registered {
                                    worker_id: "worker-1".into(),
                                    pool_id: "pool-1".into(),
                                    heartbeat_interval_ms: 200,
                                    lease_timeout_ms,
                                })),
                            }))
                            .await;
                        *plane.current.lock().unwrap() = Some(tx.clone());
                    }
                    Some(session_request::Message::Heartbeat(h)) => {
                        let mut state = plane.state.lock().unwrap();
                        state
                            .order
                            .push(format!("heartbeat:{}", h.lease_ids.join(",")));
                        state.heartbeats.push(h);
                    }
                    Some(session_request::Message::JobEvent(e)) => {
                        let mut state = plane.state.lock().unwrap();
                        state.order.push(format!("event:{}", e.lease_id));
                        state.events.push(e);
                    }
                    None => {}
                }
            }
            plane.current.lock().unwrap().take();
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn upload_workspace(
        &self,
        request: Request<Streaming<UploadWorkspaceRequest>>,
    ) -> Result<Response<UploadWorkspaceResponse>, Status> {
        let mut stream = request.into_inner();
        let mut blob = Vec::new();
        let mut first = None;
        while let Some(chunk) = stream.message().await? {
            if first.is_none() {
                first = Some((
                    chunk.lease_id.clone(),
                    chunk.run_id.clone(),
                    chunk.pool_token.clone(),
                ));
            }
            blob.extend_from_slice(&chunk.chunk);
        }
        let (lease_id, run_id, token) = first.ok_or_else(|| Status::invalid_argument("empty"))?;
        if token != TOKEN {
            return Err(Status::unauthenticated("bad pool token"));
        }
        assert!(!lease_id.is_empty() && !run_id.is_empty());
        let sha256 = hex::encode(Sha256::digest(&blob));
        let size = blob.len() as i64;
        let mut state = self.state.lock().unwrap();
        let artifact_id = format!("artifact-{}-{}", run_id, state.artifacts.len() + 1);
        state.artifacts.insert(artifact_id.clone(), blob);
        Ok(Response::new(UploadWorkspaceResponse {
            artifact_id,
            sha256,
            size,
        }))
    }

    type DownloadWorkspaceStream = ReceiverStream<Result<DownloadWorkspaceResponse, Status>>;

    async fn download_workspace(
        &self,
        request: Request<DownloadWorkspaceRequest>,
    ) -> Result<Response<Self::DownloadWorkspaceStream>, Status> {
        let request = request.into_inner();
        if request.pool_token != TOKEN {
            return Err(Status::unauthenticated("bad pool token"));
        }
        let (mut blob, tamper) = {
            let state = self.state.lock().unwrap();
            let blob = state
                .artifacts
                .get(&request.artifact_id)
                .cloned()
                .ok_or_else(|| Status::not_found("no such artifact"))?;
            (blob, state.tamper)
        };
        let mut sha256 = hex::encode(Sha256::digest(&blob));
        if tamper != Tamper::None {
            let middle = blob.len() / 2;
            blob[middle] ^= 0x55;
        }
        if tamper == Tamper::BytesAndDigest {
            sha256 = hex::encode(Sha256::digest(&blob));
        }
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for (i, chunk) in blob.chunks(64 * 1024).enumerate() {
                let message = DownloadWorkspaceResponse {
                    chunk: chunk.to_vec(),
                    sha256: if i == 0 {
                        sha256.clone()
                    } else {
                        String::new()
                    },
                };
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl Plane {
    /// Serves on `addr` (127.0.0.1:0 for a fresh port), retrying while a previous server's
    /// socket is still being released.
    pub async fn start(addr: Option<SocketAddr>) -> Plane {
        let addr = addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
        let listener = wait_until("binding the control plane address", || async move {
            tokio::net::TcpListener::bind(addr).await.ok()
        })
        .await;
        let plane = Plane {
            addr: listener.local_addr().unwrap(),
            state: Arc::new(Mutex::new(State {
                registrations: Vec::new(),
                heartbeats: Vec::new(),
                events: Vec::new(),
                artifacts: HashMap::new(),
                tamper: Tamper::None,
                lease_timeout_ms: 60_000,
                order: Vec::new(),
            })),
            current: Arc::default(),
            kill: CancellationToken::new(),
            server: Arc::default(),
        };
        let service = AgentServiceServer::new(plane.clone());
        let kill = plane.kill.clone();
        let handle = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(listener),
                    kill.cancelled_owned(),
                )
                .await;
        });
        *plane.server.lock().unwrap() = Some(handle);
        plane
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server the hard way: sessions end with UNAVAILABLE, the listener goes away.
    pub async fn kill(&self) {
        self.kill.cancel();
        self.current.lock().unwrap().take();
        let handle = self.server.lock().unwrap().take();
        if let Some(handle) = handle {
            handle.abort();
            let _ = handle.await;
        }
    }

    async fn sender(&self) -> SessionSender {
        wait_until("an agent session", || async {
            self.current.lock().unwrap().clone()
        })
        .await
    }

    pub async fn send_lease(&self, lease: Lease) {
        self.sender()
            .await
            .send(Ok(SessionResponse {
                message: Some(session_response::Message::Lease(lease)),
            }))
            .await
            .expect("session open");
    }

    pub async fn cancel(&self, lease_id: &str) {
        self.sender()
            .await
            .send(Ok(SessionResponse {
                message: Some(session_response::Message::Cancel(CancelJob {
                    lease_id: lease_id.into(),
                    run_id: String::new(),
                    reason: "stopped by a test".into(),
                })),
            }))
            .await
            .expect("session open");
    }

    /// Sends the decision after the plan of a PLAN_AND_APPLY job.
    pub async fn proceed(&self, lease_id: &str, apply: bool, upload_workspace: bool) {
        self.sender()
            .await
            .send(Ok(SessionResponse {
                message: Some(session_response::Message::Proceed(ProceedJob {
                    lease_id: lease_id.into(),
                    run_id: String::new(),
                    apply,
                    upload_workspace,
                    reason: "decided by a test".into(),
                })),
            }))
            .await
            .expect("session open");
    }

    /// Waits until the agent no longer holds `lease_id`: a heartbeat sent after this call
    /// leaves it out.
    pub async fn wait_released(&self, lease_id: &str) {
        let seen = self.state.lock().unwrap().heartbeats.len();
        wait_until(&format!("{lease_id} to be released"), || async {
            let state = self.state.lock().unwrap();
            state.heartbeats[seen..]
                .iter()
                .any(|h| !h.lease_ids.iter().any(|id| id == lease_id))
                .then_some(())
        })
        .await
    }

    pub fn events(&self, lease_id: &str) -> Vec<job_event::Event> {
        self.state
            .lock()
            .unwrap()
            .events
            .iter()
            .filter(|e| e.lease_id == lease_id)
            .filter_map(|e| e.event.clone())
            .collect()
    }

    pub fn logs(&self, lease_id: &str) -> Vec<LogLine> {
        self.events(lease_id)
            .into_iter()
            .filter_map(|e| match e {
                job_event::Event::Log(l) => Some(l),
                _ => None,
            })
            .collect()
    }

    /// Waits for the first event of `lease_id` that `pick` accepts.
    pub async fn wait_event<T>(
        &self,
        lease_id: &str,
        what: &str,
        pick: impl Fn(&job_event::Event) -> Option<T>,
    ) -> T {
        wait_until(&format!("{what} for {lease_id}"), || async {
            self.events(lease_id).iter().find_map(&pick)
        })
        .await
    }

    /// Waits for the job's last event: a result, `failed` or `stopped`.
    pub async fn wait_end(&self, lease_id: &str, kind: JobKind) -> job_event::Event {
        self.wait_event(lease_id, "the end of the job", |e| match (e, kind) {
            (job_event::Event::Failed(_) | job_event::Event::Stopped(_), _)
            | (job_event::Event::PlanResult(_), JobKind::Plan)
            | (job_event::Event::ApplyResult(_), JobKind::Apply | JobKind::PlanAndApply) => {
                Some(e.clone())
            }
            _ => None,
        })
        .await
    }

    pub async fn wait_failed(&self, lease_id: &str) -> String {
        match self.wait_end(lease_id, JobKind::Plan).await {
            job_event::Event::Failed(f) => f.reason,
            other => panic!("{lease_id}: expected failed, got {other:?}"),
        }
    }

    pub fn registrations(&self) -> usize {
        self.state.lock().unwrap().registrations.len()
    }
}

pub async fn wait_until<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Cairn Test",
            "-c",
            "user.email=test@example.invalid",
        ])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A real repository: `infra/` holds two files, `escape` is a symlink to /etc.
pub fn make_repo(dir: &Path) -> (PathBuf, String) {
    let repo = dir.join("repo");
    std::fs::create_dir_all(repo.join("infra")).unwrap();
    git(&repo, &["init", "--quiet"]);
    std::fs::write(repo.join("infra/main.tf"), "resource \"x\" \"y\" {}\n").unwrap();
    std::fs::write(
        repo.join("infra/variables.tf"),
        "variable \"password\" {}\n",
    )
    .unwrap();
    std::fs::write(repo.join("README.md"), "# test\n").unwrap();
    std::os::unix::fs::symlink("/etc", repo.join("escape")).unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "--quiet", "-m", "initial"]);
    let sha = git(&repo, &["rev-parse", "HEAD"]);
    (repo, sha)
}

pub fn plugin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_cairn-runner-testecho"))
        .parent()
        .unwrap()
        .to_owned()
}

pub fn config(plane: &Plane, work_dir: &Path) -> Config {
    Config {
        server_url: plane.url(),
        pool_token: Some(TOKEN.into()),
        name: "test-agent".into(),
        labels: vec!["test".into()],
        plugin_path: vec![plugin_dir()],
        work_dir: work_dir.to_owned(),
        handshake_timeout: Duration::from_secs(30),
        cancel_grace: Duration::from_secs(5),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(500),
        keep_work_trees: true,
        ..Config::default()
    }
}

pub struct Agent {
    pub handle: tokio::task::JoinHandle<cairn_agent::Result<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Agent {
    pub fn spawn(config: Config) -> Agent {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(cairn_agent::run(config, async move {
            let _ = stopped.await;
        }));
        Agent {
            handle,
            stop: Some(stop),
        }
    }

    /// Shuts the agent down and checks that it ends cleanly.
    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let result = tokio::time::timeout(WAIT_LIMIT, self.handle)
            .await
            .expect("agent stops")
            .expect("agent task did not panic");
        assert!(result.is_ok(), "agent ended with {result:?}");
    }
}

pub fn lease(lease_id: &str, run_id: &str, kind: JobKind, repo: &Path, sha: &str) -> Lease {
    Lease {
        lease_id: lease_id.into(),
        run_id: run_id.into(),
        stack_id: "stack-1".into(),
        kind: kind as i32,
        repository: repo.to_string_lossy().into_owned(),
        commit_sha: sha.into(),
        branch: "main".into(),
        project_root: "infra".into(),
        vendor: "testecho".into(),
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        workspace_key: RUN_KEY.to_vec(),
        ..Lease::default()
    }
}
