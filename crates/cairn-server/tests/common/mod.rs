//! A real server on 127.0.0.1:0 with SQLite in a temporary directory, real tonic clients, and a
//! test agent speaking the agent protocol over gRPC.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use cairn_proto::agent::v1 as apb;
use cairn_proto::agent::v1::agent_service_client::AgentServiceClient;
use cairn_proto::v1 as pb;
use cairn_proto::v1::run_service_client::RunServiceClient;
use cairn_proto::v1::stack_service_client::StackServiceClient;
use cairn_proto::v1::system_service_client::SystemServiceClient;
use cairn_proto::v1::worker_pool_service_client::WorkerPoolServiceClient;
use cairn_server::{Config, Server};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

pub mod replicas;

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub dir: tempfile::TempDir,
    pub admin: String,
    pub pool_token: String,
    pub channel: Channel,
    pub state: std::sync::Arc<cairn_server::state::AppState>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Clone)]
pub struct Bearer(pub Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(k) = &self.0 {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {k}").parse().unwrap());
        }
        Ok(req)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

pub fn config(dir: &Path, lease_timeout: Duration) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        lease_timeout,
        heartbeat_interval: lease_timeout / 5,
        ..Config::default()
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(Duration::from_secs(30)).await
    }

    pub async fn start_with(lease_timeout: Duration) -> TestServer {
        Self::start_on(lease_timeout, None).await
    }

    /// A server on `store` (SQLite under the temporary data directory when `None`).
    pub async fn start_on(
        lease_timeout: Duration,
        store: Option<std::sync::Arc<dyn cairn_store::Store>>,
    ) -> TestServer {
        Self::start_configured(lease_timeout, store, |_| {}).await
    }

    /// Like [`TestServer::start_on`], with `tweak` applied to the configuration.
    pub async fn start_configured(
        lease_timeout: Duration,
        store: Option<std::sync::Arc<dyn cairn_store::Store>>,
        tweak: impl FnOnce(&mut Config),
    ) -> TestServer {
        Self::start_in(tempfile::tempdir().unwrap(), lease_timeout, store, tweak).await
    }

    /// Stops the server and starts a new one on the same data directory (database, master
    /// key, artifacts): a control-plane restart.
    pub async fn restart(mut self, lease_timeout: Duration) -> TestServer {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap();
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Self::start_in(dir, lease_timeout, None, |_| {}).await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        lease_timeout: Duration,
        store: Option<std::sync::Arc<dyn cairn_store::Store>>,
        tweak: impl FnOnce(&mut Config),
    ) -> TestServer {
        let mut cfg = config(dir.path(), lease_timeout);
        tweak(&mut cfg);
        let mut builder = Server::builder(cfg);
        if let Some(store) = store {
            builder = builder.store(store);
        }
        let server = builder.build().await.unwrap();
        let state = server.state();
        let listener = server.bind().await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            server
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let read = |name: &str| {
            std::fs::read_to_string(dir.path().join(name))
                .unwrap()
                .trim()
                .to_string()
        };
        TestServer {
            addr,
            admin: read("admin.key"),
            pool_token: read("default-pool.token"),
            dir,
            channel,
            state,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    /// Stops the server and waits until it has shut down.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap();
        }
    }

    fn authed(&self, key: Option<&str>) -> Authed {
        InterceptedService::new(self.channel.clone(), Bearer(key.map(str::to_string)))
    }

    pub fn stacks(&self, key: &str) -> StackServiceClient<Authed> {
        StackServiceClient::new(self.authed(Some(key)))
    }

    pub fn runs(&self, key: &str) -> RunServiceClient<Authed> {
        RunServiceClient::new(self.authed(Some(key)))
    }

    pub fn system(&self, key: Option<&str>) -> SystemServiceClient<Authed> {
        SystemServiceClient::new(self.authed(key))
    }

    pub fn policies(
        &self,
        key: &str,
    ) -> cairn_proto::v1::policy_service_client::PolicyServiceClient<Authed> {
        cairn_proto::v1::policy_service_client::PolicyServiceClient::new(self.authed(Some(key)))
    }

    pub fn pools(&self, key: &str) -> WorkerPoolServiceClient<Authed> {
        WorkerPoolServiceClient::new(self.authed(Some(key)))
    }

    pub fn agent_client(&self) -> AgentServiceClient<Channel> {
        AgentServiceClient::new(self.channel.clone())
    }

    /// A new API key with `role`, returning its secret.
    pub async fn key(&self, login: &str, role: pb::Role) -> String {
        self.system(Some(&self.admin))
            .create_api_key(pb::CreateApiKeyRequest {
                login: login.into(),
                role: role as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .secret
    }

    /// Creates a stack tracking `commit`.
    pub async fn stack(&self, id: &str, autodeploy: bool, commit: &str) -> pb::Stack {
        let mut c = self.stacks(&self.admin);
        c.create_stack(pb::CreateStackRequest {
            stack: Some(stack_input(id, autodeploy)),
            env: vec![],
        })
        .await
        .unwrap();
        c.sync_stack(pb::SyncStackRequest {
            stack_id: id.into(),
            commit: Some(pb::Commit {
                hash: commit.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stack
        .unwrap()
    }

    pub async fn trigger(&self, stack: &str, t: pb::RunType) -> pb::Run {
        self.runs(&self.admin)
            .trigger_run(pb::TriggerRunRequest {
                stack_id: stack.into(),
                r#type: t as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .run
            .unwrap()
    }

    pub async fn get_run(&self, id: &str) -> pb::Run {
        self.runs(&self.admin)
            .get_run(pb::GetRunRequest { run_id: id.into() })
            .await
            .unwrap()
            .into_inner()
            .run
            .unwrap()
    }

    /// Polls until the run reaches `state` (panics after a generous deadline, never asserts on
    /// how long it took).
    pub async fn wait_state(&self, id: &str, state: pb::RunState) -> pb::Run {
        for _ in 0..3000 {
            let run = self.get_run(id).await;
            if run.state == state as i32 {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let run = self.get_run(id).await;
        panic!("run {id} never reached {state:?}: {:?}", run.state());
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn stack_input(id: &str, autodeploy: bool) -> pb::Stack {
    pb::Stack {
        id: id.into(),
        name: format!("Stack {id}"),
        repository: "file:///nonexistent/infra.git".into(),
        branch: "main".into(),
        project_root: "network".into(),
        vendor: "terraform".into(),
        autodeploy,
        ..Default::default()
    }
}

pub fn code<T: std::fmt::Debug>(r: Result<T, Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

pub const SHA_A: &str = "1111111111111111111111111111111111111111";
pub const SHA_B: &str = "2222222222222222222222222222222222222222";

/// An agent speaking the real protocol over gRPC.
pub struct TestAgent {
    pub worker_id: String,
    tx: mpsc::Sender<apb::SessionRequest>,
    inbound: tonic::Streaming<apb::SessionResponse>,
    pub token: String,
    client: AgentServiceClient<Channel>,
}

impl TestAgent {
    pub async fn connect(server: &TestServer, max_jobs: i32) -> TestAgent {
        Self::try_connect(server, &server.pool_token, max_jobs)
            .await
            .unwrap()
    }

    pub async fn try_connect(
        server: &TestServer,
        token: &str,
        max_jobs: i32,
    ) -> Result<TestAgent, Status> {
        Self::try_connect_as(server, token, "test-agent", max_jobs).await
    }

    /// An agent registering with worker name `name`.
    pub async fn try_connect_as(
        server: &TestServer,
        token: &str,
        name: &str,
        max_jobs: i32,
    ) -> Result<TestAgent, Status> {
        let (tx, rx) = mpsc::channel(64);
        tx.send(apb::SessionRequest {
            message: Some(apb::session_request::Message::Register(apb::Register {
                pool_token: token.into(),
                name: name.into(),
                max_jobs,
                vendors: vec!["terraform".into()],
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let mut client = server.agent_client();
        let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
        let first = inbound.message().await?.expect("registered");
        let worker_id = match first.message {
            Some(apb::session_response::Message::Registered(r)) => r.worker_id,
            other => panic!("expected Registered, got {other:?}"),
        };
        Ok(TestAgent {
            worker_id,
            tx,
            inbound,
            token: token.into(),
            client,
        })
    }

    pub async fn recv(&mut self) -> apb::session_response::Message {
        let m = tokio::time::timeout(Duration::from_secs(60), self.inbound.message())
            .await
            .expect("no message from the server within a minute")
            .unwrap()
            .expect("session closed");
        m.message.unwrap()
    }

    pub async fn lease(&mut self) -> apb::Lease {
        match self.recv().await {
            apb::session_response::Message::Lease(l) => l,
            other => panic!("expected a lease, got {other:?}"),
        }
    }

    /// The decision after the plan of a PLAN_AND_APPLY lease.
    pub async fn proceed(&mut self) -> apb::ProceedJob {
        match self.recv().await {
            apb::session_response::Message::Proceed(p) => p,
            other => panic!("expected ProceedJob, got {other:?}"),
        }
    }

    pub async fn event(&self, lease: &apb::Lease, ev: apb::job_event::Event) {
        self.tx
            .send(apb::SessionRequest {
                message: Some(apb::session_request::Message::JobEvent(apb::JobEvent {
                    lease_id: lease.lease_id.clone(),
                    run_id: lease.run_id.clone(),
                    event: Some(ev),
                })),
            })
            .await
            .unwrap();
    }

    pub async fn heartbeat(&self, lease_ids: Vec<String>) {
        self.tx
            .send(apb::SessionRequest {
                message: Some(apb::session_request::Message::Heartbeat(apb::Heartbeat {
                    lease_ids,
                })),
            })
            .await
            .unwrap();
    }

    pub async fn phase(&self, lease: &apb::Lease, p: pb::Phase) {
        self.event(
            lease,
            apb::job_event::Event::Phase(cairn_proto::runner::v1::PhaseEvent { phase: p as i32 }),
        )
        .await;
    }

    pub async fn log(&self, lease: &apb::Lease, msg: &str) {
        self.event(
            lease,
            apb::job_event::Event::Log(pb::LogLine {
                phase: pb::Phase::Planning as i32,
                stream: pb::LogStream::Stdout as i32,
                message: msg.into(),
                ..Default::default()
            }),
        )
        .await;
    }

    /// A successful plan; `addresses` are resources to add (empty: a no-op).
    pub async fn plan(&self, lease: &apb::Lease, addresses: &[&str]) {
        let changes = addresses
            .iter()
            .map(|a| pb::Change {
                action: pb::ChangeAction::Added as i32,
                entity: Some(pb::Entity {
                    address: a.to_string(),
                    name: a.rsplit('.').next().unwrap().to_string(),
                    r#type: "aws_s3_bucket".into(),
                    entity_vendor: "terraform".into(),
                    entity_type: "resource".into(),
                    data_json: "{}".into(),
                }),
                phase: pb::ChangePhase::Plan as i32,
            })
            .collect::<Vec<_>>();
        self.event(
            lease,
            apb::job_event::Event::PlanResult(cairn_proto::runner::v1::PlanResult {
                success: true,
                no_op: changes.is_empty(),
                delta: Some(pb::Delta {
                    added_resources: changes.len() as i32,
                    ..Default::default()
                }),
                changes,
                ..Default::default()
            }),
        )
        .await;
    }

    /// The plugin's word that the saved plan has changes, passed on before its details.
    pub async fn plan_saved(&self, lease: &apb::Lease) {
        self.event(
            lease,
            apb::job_event::Event::PlanSaved(cairn_proto::runner::v1::PlanSaved {}),
        )
        .await;
    }

    /// Runs the planning phases and reports `addresses` as changes.
    pub async fn plan_through(&self, lease: &apb::Lease, addresses: &[&str]) {
        self.phase(lease, pb::Phase::Initializing).await;
        self.phase(lease, pb::Phase::Planning).await;
        self.plan(lease, addresses).await;
    }

    pub async fn apply_ok(&self, lease: &apb::Lease) {
        self.phase(lease, pb::Phase::Applying).await;
        self.event(
            lease,
            apb::job_event::Event::ApplyResult(cairn_proto::runner::v1::ApplyResult {
                success: true,
                ..Default::default()
            }),
        )
        .await;
    }

    pub async fn upload(
        &mut self,
        lease: &apb::Lease,
        data: &[u8],
    ) -> Result<apb::UploadWorkspaceResponse, Status> {
        let chunks: Vec<apb::UploadWorkspaceRequest> = data
            .chunks(1000)
            .enumerate()
            .map(|(i, c)| apb::UploadWorkspaceRequest {
                lease_id: if i == 0 {
                    lease.lease_id.clone()
                } else {
                    String::new()
                },
                run_id: if i == 0 {
                    lease.run_id.clone()
                } else {
                    String::new()
                },
                pool_token: if i == 0 {
                    self.token.clone()
                } else {
                    String::new()
                },
                chunk: c.to_vec(),
            })
            .collect();
        self.client
            .upload_workspace(futures::stream::iter(chunks))
            .await
            .map(|r| r.into_inner())
    }

    pub async fn download(&mut self, lease: &apb::Lease) -> Result<(Vec<u8>, String), Status> {
        let mut s = self
            .client
            .download_workspace(apb::DownloadWorkspaceRequest {
                lease_id: lease.lease_id.clone(),
                artifact_id: lease.artifact_id.clone(),
                pool_token: self.token.clone(),
            })
            .await?
            .into_inner();
        let mut data = Vec::new();
        let mut sha = String::new();
        while let Some(m) = s.message().await? {
            if !m.sha256.is_empty() {
                sha = m.sha256;
            }
            data.extend_from_slice(&m.chunk);
        }
        Ok((data, sha))
    }
}
