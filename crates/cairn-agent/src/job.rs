//! One leased job: checkout or restore, run the plugin, stream events, hand over the workspace.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_proto::agent::v1::agent_service_client::AgentServiceClient;
use cairn_proto::agent::v1::{
    job_event, DownloadWorkspaceRequest, JobEvent, JobFailed, JobKind, JobStopped, Lease,
    ProceedJob, UploadWorkspaceRequest, WorkspaceStored,
};
use cairn_proto::runner::v1::{
    apply_response, plan_response, ApplyRequest, ApplyResponse, ApplyResult, DescribeRequest,
    DescribeResponse, PhaseEvent, PlanRequest, PlanResult, Workspace,
};
use cairn_proto::v1::{LogLine, LogStream, Phase};
use cairn_runner_sdk::{LaunchOptions, PluginHandle, Redactor};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Streaming;
use tracing::Instrument;

use crate::git::{resolve_project_root, GitCache};
use crate::workspace;
use crate::{Config, Error, Result};

const PLUGIN_STDERR_TAIL: usize = 20;

type RunnerClient = cairn_proto::runner::v1::runner_service_client::RunnerServiceClient<Channel>;

type DescribeAnswer = std::result::Result<DescribeResponse, tonic::Status>;

/// A started plugin and its Describe call under way (a failed Describe is reported with the
/// plugin's stderr, which needs the job).
type Launched = Result<(PluginHandle, tokio::task::JoinHandle<DescribeAnswer>)>;

/// What every job shares: settings, the repository caches, a channel to the control plane.
pub(crate) struct Shared {
    pub config: Config,
    pub token: String,
    pub git: GitCache,
    pub jobs_dir: PathBuf,
    pub channel: Channel,
}

impl Shared {
    /// A request carrying the pool token and the current span's trace context.
    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(value) = format!("Bearer {}", self.token).parse() {
            request.metadata_mut().insert("authorization", value);
        }
        cairn_telemetry::propagation::inject_metadata(request.metadata_mut());
        request
    }
}

/// Why a job's cancellation token fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopCause {
    Cancelled,
    Shutdown,
}

pub(crate) struct JobControl {
    pub cancel: CancellationToken,
    pub cause: Mutex<Option<StopCause>>,
    /// The control plane's ProceedJob for a PLAN_AND_APPLY job; it may arrive before the job
    /// starts waiting for it, so it is kept here rather than passed to a waiting task.
    decision: Mutex<Option<ProceedJob>>,
    decided: Notify,
    /// How long a PLAN_AND_APPLY job waits for ProceedJob after its plan: the lease timeout,
    /// after which the control plane would have given the lease up anyway.
    decision_timeout: Duration,
}

impl JobControl {
    pub(crate) fn new(decision_timeout: Duration) -> Self {
        Self {
            cancel: CancellationToken::new(),
            cause: Mutex::new(None),
            decision: Mutex::new(None),
            decided: Notify::new(),
            decision_timeout,
        }
    }

    /// Records the control plane's decision; the first one counts (a re-sent copy after a
    /// reconnect changes nothing).
    pub(crate) fn decide(&self, proceed: ProceedJob) {
        self.decision
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(proceed);
        self.decided.notify_one();
    }

    async fn decision(&self) -> Result<ProceedJob> {
        tokio::time::timeout(self.decision_timeout, self.decided())
            .await
            .map_err(|_| Error::NoDecision(self.decision_timeout))
    }

    /// The decision, once there is one, however long that takes.
    async fn decided(&self) -> ProceedJob {
        loop {
            if let Some(d) = self
                .decision
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
            {
                return d;
            }
            self.decided.notified().await;
        }
    }

    pub(crate) fn stop(&self, cause: StopCause) {
        self.cause
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(cause);
        self.cancel.cancel();
    }

    fn cause(&self) -> StopCause {
        self.cause
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or(StopCause::Cancelled)
    }
}

struct Job {
    shared: Arc<Shared>,
    lease: Lease,
    events: mpsc::UnboundedSender<JobEvent>,
    redactor: Redactor,
    seq: i64,
    phase: Phase,
    dir: PathBuf,
    plugin_tail: Arc<Mutex<VecDeque<String>>>,
    /// The plugin's answer to Describe, still on its way: it is logged when it comes rather
    /// than waited for, since a vendor's version query costs a process start.
    describing: Option<tokio::task::JoinHandle<DescribeAnswer>>,
}

/// Runs `lease` to its end and reports exactly one terminal event (a result, `failed` or
/// `stopped`). Never panics the agent: every failure becomes `JobFailed`.
pub(crate) async fn run(
    shared: Arc<Shared>,
    lease: Lease,
    events: mpsc::UnboundedSender<JobEvent>,
    control: Arc<JobControl>,
) {
    let secret_values: Vec<String> = lease
        .secret_names
        .iter()
        .filter_map(|name| lease.env.get(name))
        .filter(|v| !v.is_empty())
        .cloned()
        .collect();
    let dir = shared.jobs_dir.join(dir_name(&lease.lease_id));
    let mut job = Job {
        redactor: Redactor::new(secret_values),
        shared,
        events,
        seq: 0,
        phase: Phase::Unspecified,
        dir,
        plugin_tail: Arc::default(),
        describing: None,
        lease,
    };

    let span = tracing::info_span!(
        "job",
        run.id = %job.lease.run_id,
        stack.id = %job.lease.stack_id,
        lease.id = %job.lease.lease_id,
        kind = ?job.lease.kind(),
    );
    if !job.lease.traceparent.is_empty() {
        if let Err(e) =
            cairn_telemetry::propagation::set_parent_from_traceparent(&span, &job.lease.traceparent)
        {
            tracing::warn!(lease.id = %job.lease.lease_id, "ignoring the lease's trace context: {e}");
        }
    }

    async {
        tracing::info!("job started");
        let mut plugin: Option<PluginHandle> = None;
        let outcome = tokio::select! {
            r = job.execute(&mut plugin, &control) => r,
            () = control.cancel.cancelled() => Err(match control.cause() {
                StopCause::Cancelled => Error::Stopped,
                StopCause::Shutdown => Error::ShuttingDown,
            }),
        };
        // The plan/apply stream is gone by now; closing the plugin's stdin lets it stop its
        // vendor (SIGINT, then SIGKILL) before the grace period ends in SIGKILL for all.
        if let Some(plugin) = plugin.take() {
            if let Err(e) = plugin.shutdown(job.shared.config.cancel_grace).await {
                tracing::warn!("stopping the runner plugin: {e}");
            }
        }
        match outcome {
            Ok(()) => tracing::info!("job finished"),
            Err(Error::Stopped) => {
                job.system("The job was stopped.");
                job.emit(job_event::Event::Stopped(JobStopped {}));
                tracing::info!("job stopped");
            }
            Err(e) => {
                let reason = job.redactor.redact(&e.to_string());
                tracing::warn!("job failed: {reason}");
                job.system(&format!("Job failed: {reason}"));
                job.emit(job_event::Event::Failed(JobFailed { reason }));
            }
        }
        if !job.shared.config.keep_work_trees {
            remove_dir(&job.dir).await;
        }
    }
    .instrument(span)
    .await;
}

/// A file-system-safe directory name for a lease id of any shape.
fn dir_name(lease_id: &str) -> String {
    let clean = !lease_id.is_empty()
        && lease_id.len() <= 100
        && lease_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if clean {
        lease_id.to_owned()
    } else {
        workspace::sha256_hex(lease_id.as_bytes())[..32].to_owned()
    }
}

async fn remove_dir(dir: &Path) {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cannot remove {}: {e}", dir.display()),
    }
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

impl Job {
    fn emit(&self, event: job_event::Event) {
        // A closed channel means the agent itself is gone; nobody is left to tell.
        let _ = self.events.send(JobEvent {
            lease_id: self.lease.lease_id.clone(),
            run_id: self.lease.run_id.clone(),
            event: Some(event),
        });
    }

    fn log(&mut self, mut line: LogLine) {
        self.seq += 1;
        line.seq = self.seq;
        line.message = self.redactor.redact(&line.message);
        if line.phase == Phase::Unspecified as i32 {
            line.phase = self.phase as i32;
        }
        if line.timestamp == 0 {
            line.timestamp = now_nanos();
        }
        self.emit(job_event::Event::Log(line));
    }

    /// A line written by the agent itself.
    fn system(&mut self, message: &str) {
        self.log(LogLine {
            seq: 0,
            timestamp: now_nanos(),
            phase: self.phase as i32,
            stream: LogStream::System as i32,
            message: message.to_owned(),
        });
    }

    /// Moves to `phase` unless the job is already there or further; phases never go back.
    fn advance(&mut self, phase: Phase) {
        if (phase as i32) > (self.phase as i32) {
            self.phase = phase;
            self.emit(job_event::Event::Phase(PhaseEvent {
                phase: phase as i32,
            }));
        }
    }

    async fn execute(
        &mut self,
        plugin: &mut Option<PluginHandle>,
        control: &JobControl,
    ) -> Result<()> {
        self.advance(Phase::Preparing);
        remove_dir(&self.dir).await;
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(Error::io(format!("creating {}", self.dir.display())))?;
        match self.lease.kind() {
            JobKind::Plan => {
                let (tree, commit) = self.source_and_plugin(plugin).await?;
                self.plan(&tree, &commit, plugin, self.lease.upload_workspace, None)
                    .await?;
            }
            JobKind::PlanAndApply => {
                let (tree, commit) = self.source_and_plugin(plugin).await?;
                let planned = self
                    .plan(&tree, &commit, plugin, false, Some(control))
                    .await?;
                match planned.applying {
                    // Applied as decided, whatever the details said, unless the plan failed:
                    // then the apply's stream is dropped, which stops it (SIGINT first).
                    Some(applying) if planned.result.success => {
                        self.apply(&tree, plugin, Some(applying)).await?;
                    }
                    Some(_) => {
                        self.system("The plan failed after it began to apply: stopping the apply")
                    }
                    // A failed plan has nothing to apply; a no-op plan finishes the run. Once
                    // the plan was passed on as saved with changes, the control plane may have
                    // decided to apply it already, so its decision is waited for in any case.
                    None if planned.result.success && (!planned.result.no_op || planned.saved) => {
                        self.proceed(&tree, plugin, control).await?;
                    }
                    None => {}
                }
            }
            JobKind::Apply => {
                let artifact_id = self.lease.artifact_id.clone();
                if artifact_id.is_empty() {
                    return Err(Error::InvalidLease(
                        "an apply lease must name the workspace artifact to restore".into(),
                    ));
                }
                let launch = self.launch_plugin();
                let (tree, launched) = tokio::join!(
                    self.restore(&artifact_id, "the workspace of the plan"),
                    launch
                );
                let tree = tree?;
                self.adopt_plugin(plugin, launched)?;
                self.apply(&tree, plugin, None).await?;
            }
            JobKind::Unspecified => {
                return Err(Error::InvalidLease("the lease has no job kind".into()))
            }
        }
        Ok(())
    }

    /// After the plan of a PLAN_AND_APPLY job: the control plane, not the agent, decides
    /// whether it is applied (plan policies, autodeploy and stop requests weigh in there).
    async fn proceed(
        &mut self,
        tree: &Path,
        plugin: &mut Option<PluginHandle>,
        control: &JobControl,
    ) -> Result<()> {
        self.system("Waiting for the control plane to decide whether to apply the plan");
        let decision = control.decision().await?;
        let reason = reason_suffix(&decision);
        if decision.apply {
            self.system(&format!("Applying the plan{reason}"));
            self.apply(tree, plugin, None).await?;
        } else if decision.upload_workspace {
            self.system(&format!(
                "Not applying{reason}: keeping the workspace for a later apply"
            ));
            if self.lease.workspace_key.is_empty() {
                return Err(Error::InvalidLease(
                    "the control plane asked for a workspace upload but the lease has no workspace key"
                        .into(),
                ));
            }
            self.upload(tree).await?;
        } else {
            self.system(&format!("Not applying{reason}"));
        }
        Ok(())
    }

    /// [`Job::source`] while the plugin starts: neither needs the other, and both are on the
    /// path from lease to first Plan call. A failed checkout wins over a failed launch (it is
    /// what the run's author has to fix first); the launched plugin is then dropped.
    async fn source_and_plugin(
        &mut self,
        plugin: &mut Option<PluginHandle>,
    ) -> Result<(PathBuf, String)> {
        let launch = self.launch_plugin();
        let (source, launched) = tokio::join!(self.source(), launch);
        let source = source?;
        self.adopt_plugin(plugin, launched)?;
        Ok(source)
    }

    /// The tree a plan starts from: the Git checkout, or an uploaded configuration the control
    /// plane sealed for this lease.
    async fn source(&mut self) -> Result<(PathBuf, String)> {
        let artifact_id = self.lease.source_artifact_id.clone();
        if artifact_id.is_empty() {
            return self.checkout().await;
        }
        let tree = self
            .restore(&artifact_id, "the uploaded configuration")
            .await?;
        Ok((tree, self.lease.commit_sha.clone()))
    }

    async fn checkout(&mut self) -> Result<(PathBuf, String)> {
        let span = tracing::info_span!(
            "checkout",
            run.id = %self.lease.run_id,
            stack.id = %self.lease.stack_id,
            repository = %self.lease.repository,
            commit = %self.lease.commit_sha,
        );
        let what = if self.lease.commit_sha.is_empty() {
            format!("branch {}", self.lease.branch)
        } else {
            format!("commit {}", self.lease.commit_sha)
        };
        self.system(&format!(
            "Checking out {what} of {}",
            strip_credentials(&self.lease.repository)
        ));
        let tree = self.dir.join("tree");
        tokio::fs::create_dir_all(&tree)
            .await
            .map_err(Error::io(format!("creating {}", tree.display())))?;
        let sha = self
            .shared
            .git
            .checkout(
                &self.lease.repository,
                &self.lease.commit_sha,
                &self.lease.branch,
                &tree,
                &self.dir.join("index"),
            )
            .instrument(span)
            .await
            .map_err(|e| match e {
                // Credentials in a repository URL must not reach the run log.
                Error::RepositoryFetch { repository, detail } => Error::RepositoryFetch {
                    repository: strip_credentials(&repository),
                    detail,
                },
                Error::CommitNotFound { repository, commit } => Error::CommitNotFound {
                    repository: strip_credentials(&repository),
                    commit,
                },
                other => other,
            })?;
        self.system(&format!("Checked out commit {sha}"));
        Ok((tree, sha))
    }

    async fn restore(&mut self, artifact_id: &str, what: &str) -> Result<PathBuf> {
        let artifact_id = artifact_id.to_owned();
        let span = tracing::info_span!(
            "download",
            run.id = %self.lease.run_id,
            stack.id = %self.lease.stack_id,
            artifact.id = %artifact_id,
        );
        self.system(&format!("Restoring {what} ({artifact_id})"));
        let sealed = self.download(&artifact_id).instrument(span).await?;
        let key = self.lease.workspace_key.clone();
        let run_id = self.lease.run_id.clone();
        let tree = self.dir.join("tree");
        let dest = tree.clone();
        let id = artifact_id.clone();
        tokio::task::spawn_blocking(move || {
            let plain = workspace::open(&key, &run_id, &id, &sealed)?;
            std::fs::create_dir_all(&dest)
                .map_err(Error::io(format!("creating {}", dest.display())))?;
            workspace::unpack(&plain, &dest)
        })
        .await
        .map_err(|e| Error::Workspace {
            action: "restore",
            detail: e.to_string(),
        })??;
        self.system("Workspace restored");
        Ok(tree)
    }

    async fn download(&mut self, artifact_id: &str) -> Result<Vec<u8>> {
        let mut client = AgentServiceClient::new(self.shared.channel.clone());
        let request = self.shared.request(DownloadWorkspaceRequest {
            lease_id: self.lease.lease_id.clone(),
            artifact_id: artifact_id.to_owned(),
            pool_token: self.shared.token.clone(),
        });
        let failed = |status: tonic::Status| Error::Workspace {
            action: "download",
            detail: status.message().to_owned(),
        };
        let mut stream = client
            .download_workspace(request)
            .await
            .map_err(failed)?
            .into_inner();
        let mut sealed = Vec::new();
        let mut expected = String::new();
        while let Some(chunk) = stream.message().await.map_err(failed)? {
            if expected.is_empty() && !chunk.sha256.is_empty() {
                expected = chunk.sha256;
            }
            sealed.extend_from_slice(&chunk.chunk);
        }
        if expected.is_empty() {
            return Err(Error::Workspace {
                action: "download",
                detail: format!("the control plane sent no sha256 for {artifact_id}"),
            });
        }
        let actual = workspace::sha256_hex(&sealed);
        if !actual.eq_ignore_ascii_case(&expected) {
            return Err(Error::WorkspaceDigest {
                artifact_id: artifact_id.to_owned(),
                expected,
                actual,
            });
        }
        Ok(sealed)
    }

    async fn upload(&mut self, tree: &Path) -> Result<()> {
        let span = tracing::info_span!(
            "upload",
            run.id = %self.lease.run_id,
            stack.id = %self.lease.stack_id,
        );
        async {
            let key = self.lease.workspace_key.clone();
            let run_id = self.lease.run_id.clone();
            let src = tree.to_owned();
            let sealed = tokio::task::spawn_blocking(move || {
                workspace::seal(&key, &run_id, &workspace::pack(&src)?)
            })
            .await
            .map_err(|e| Error::Workspace {
                action: "archiving",
                detail: e.to_string(),
            })??;
            let sha = workspace::sha256_hex(&sealed);
            self.system(&format!(
                "Uploading the workspace ({} bytes, encrypted)",
                sealed.len()
            ));
            let chunks: Vec<UploadWorkspaceRequest> = sealed
                .chunks(workspace::CHUNK_SIZE)
                .enumerate()
                .map(|(i, chunk)| UploadWorkspaceRequest {
                    lease_id: if i == 0 {
                        self.lease.lease_id.clone()
                    } else {
                        String::new()
                    },
                    run_id: if i == 0 {
                        self.lease.run_id.clone()
                    } else {
                        String::new()
                    },
                    pool_token: if i == 0 {
                        self.shared.token.clone()
                    } else {
                        String::new()
                    },
                    chunk: chunk.to_vec(),
                })
                .collect();
            drop(sealed);
            let mut client = AgentServiceClient::new(self.shared.channel.clone());
            let response = client
                .upload_workspace(self.shared.request(tokio_stream::iter(chunks)))
                .await
                .map_err(|status| Error::Workspace {
                    action: "upload",
                    detail: status.message().to_owned(),
                })?
                .into_inner();
            if !response.sha256.is_empty() && !response.sha256.eq_ignore_ascii_case(&sha) {
                return Err(Error::Workspace {
                    action: "upload",
                    detail: format!(
                        "the control plane stored sha256 {} but the agent sent {sha}",
                        response.sha256
                    ),
                });
            }
            self.system(&format!("Workspace stored as {}", response.artifact_id));
            self.emit(job_event::Event::WorkspaceStored(WorkspaceStored {
                artifact_id: response.artifact_id,
                sha256: sha,
            }));
            Ok(())
        }
        .instrument(span)
        .await
    }

    fn workspace(&self, tree: &Path) -> Workspace {
        Workspace {
            root_dir: tree.to_string_lossy().into_owned(),
            project_root: self.lease.project_root.clone(),
            env: self.lease.env.clone(),
            secret_values: self
                .lease
                .secret_names
                .iter()
                .filter_map(|n| self.lease.env.get(n))
                .filter(|v| !v.is_empty())
                .cloned()
                .collect(),
            variables: self.lease.variables.clone(),
            run_id: self.lease.run_id.clone(),
            stack_id: self.lease.stack_id.clone(),
        }
    }

    fn plugin_name(&self) -> String {
        cairn_runner_sdk::plugin_binary_name(&self.lease.vendor)
    }

    /// The client of the job's plugin, started now unless it already runs.
    async fn plugin_client(&mut self, plugin: &mut Option<PluginHandle>) -> Result<RunnerClient> {
        if let Some(handle) = plugin {
            return Ok(handle.client.clone());
        }
        let launched = self.launch_plugin().await;
        self.adopt_plugin(plugin, launched)
    }

    /// Starts the stack's plugin and asks it to describe itself. The future owns what it needs,
    /// so it can run beside the checkout that borrows the job.
    fn launch_plugin(&self) -> impl std::future::Future<Output = Launched> + Send + 'static {
        let span = tracing::info_span!(
            "init",
            run.id = %self.lease.run_id,
            stack.id = %self.lease.stack_id,
            vendor = %self.lease.vendor,
        );
        let vendor = self.lease.vendor.clone();
        let plugin_path = self.shared.config.plugin_path.clone();
        let tail = Arc::clone(&self.plugin_tail);
        let redactor = self.redactor.clone();
        let options = LaunchOptions {
            handshake_timeout: self.shared.config.handshake_timeout,
            on_stderr: Arc::new(move |line| {
                let line = redactor.redact(line);
                tracing::info!(target: "cairn_agent::plugin", "{line}");
                let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                if tail.len() == PLUGIN_STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }),
            env: self
                .shared
                .config
                .otlp_endpoint
                .iter()
                .map(|e| (cairn_runner_sdk::OTLP_ENDPOINT_ENV.into(), e.into()))
                .collect(),
        };
        async move {
            if vendor.is_empty()
                || !vendor
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(Error::InvalidLease(format!(
                    "vendor `{vendor}` is not a plugin name"
                )));
            }
            let binary = cairn_runner_sdk::find_plugin(&vendor, &plugin_path)?;
            let handle = cairn_runner_sdk::launch(&binary, options).await?;
            let mut request = tonic::Request::new(DescribeRequest {});
            cairn_telemetry::propagation::inject_metadata(request.metadata_mut());
            let mut client = handle.client.clone();
            let describing = tokio::spawn(
                async move {
                    client
                        .describe(request)
                        .await
                        .map(tonic::Response::into_inner)
                }
                .in_current_span(),
            );
            Ok((handle, describing))
        }
        .instrument(span)
    }

    /// Keeps a launched plugin for the job (so that it is stopped with it).
    fn adopt_plugin(
        &mut self,
        plugin: &mut Option<PluginHandle>,
        launched: Launched,
    ) -> Result<RunnerClient> {
        let (handle, describing) = launched?;
        let client = handle.client.clone();
        *plugin = Some(handle);
        self.describing = Some(describing);
        Ok(client)
    }

    /// Logs what the plugin is once its Describe answer is in; with `wait`, waits for it. A
    /// failed Describe fails the job, as a plugin that cannot say what it is is broken.
    async fn described(&mut self, wait: bool) -> Result<()> {
        let Some(handle) = self.describing.take_if(|h| wait || h.is_finished()) else {
            return Ok(());
        };
        let described = handle
            .await
            .map_err(|e| Error::PluginCall {
                plugin: self.plugin_name(),
                call: "describe",
                detail: e.to_string(),
            })?
            .map_err(|s| self.call_failed("describe", &s))?;
        self.system(&format!(
            "Runner plugin {} {}{}",
            described.vendor,
            described.version,
            if described.vendor_version.is_empty() {
                String::new()
            } else {
                format!(" ({} {})", described.vendor, described.vendor_version)
            }
        ));
        Ok(())
    }

    fn call_failed(&self, call: &'static str, status: &tonic::Status) -> Error {
        let tail = self
            .plugin_tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n");
        let mut detail = match status.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
                if status.message().contains("transport")
                    || status.message().contains("connection")
                    || status.message().contains("h2") =>
            {
                format!(
                    "the plugin crashed or closed its connection ({})",
                    status.message()
                )
            }
            _ => format!("{:?}: {}", status.code(), status.message()),
        };
        if !tail.is_empty() {
            detail.push_str("; plugin stderr:\n");
            detail.push_str(&tail);
        }
        Error::PluginCall {
            plugin: self.plugin_name(),
            call,
            detail,
        }
    }

    fn stream_ended(&self, call: &'static str) -> Error {
        let tail = self
            .plugin_tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n");
        Error::PluginCall {
            plugin: self.plugin_name(),
            call,
            detail: if tail.is_empty() {
                "the plugin ended the stream without a result (did it crash?)".into()
            } else {
                format!("the plugin ended the stream without a result; plugin stderr:\n{tail}")
            },
        }
    }

    /// Plans. With `control` (a PLAN_AND_APPLY job), a plugin's `PlanSaved` is passed on, and
    /// should the control plane decide to apply before the plan's details are in, the apply
    /// starts at once and is returned, under way, with the result.
    async fn plan(
        &mut self,
        tree: &Path,
        commit: &str,
        plugin: &mut Option<PluginHandle>,
        upload: bool,
        control: Option<&JobControl>,
    ) -> Result<Planned> {
        resolve_project_root(tree, &self.lease.project_root, commit)?;
        self.advance(Phase::Initializing);
        let mut client = self.plugin_client(plugin).await?;
        let job_span = tracing::Span::current();
        let span = tracing::info_span!(
            "plan",
            run.id = %self.lease.run_id,
            stack.id = %self.lease.stack_id,
        );
        let mut request = tonic::Request::new(PlanRequest {
            workspace: Some(self.workspace(tree)),
            targets: self.lease.targets.clone(),
            destroy: self.lease.destroy,
            skip_planning: self.lease.skip_planning,
        });
        cairn_telemetry::propagation::inject_span_into_metadata(&span, request.metadata_mut());
        let mut result = None;
        let mut applying = None;
        let mut saved = false;
        async {
            let mut stream = client
                .plan(request)
                .await
                .map_err(|s| self.call_failed("plan", &s))?
                .into_inner();
            // Set once the plan is saved and passed on; cleared when the decision came.
            let mut awaiting_decision: Option<&JobControl> = None;
            loop {
                let message = tokio::select! {
                    message = stream.message() => message,
                    decision = async { Some(awaiting_decision?.decided().await) }, if awaiting_decision.is_some() => {
                        awaiting_decision = None;
                        // Before the plan result the control plane only ever says "apply".
                        if let Some(d) = decision.filter(|d| d.apply) {
                            self.system(&format!("Applying the plan while its details are read{}", reason_suffix(&d)));
                            // The run is applying from now on, whatever the plan stream still says.
                            self.advance(Phase::Applying);
                            applying = Some(self.start_apply(&mut client, tree, &job_span).await?);
                        }
                        continue;
                    }
                };
                self.described(false).await?;
                match message {
                    Ok(Some(message)) => match message.event {
                        Some(plan_response::Event::Log(line)) => self.log(line),
                        Some(plan_response::Event::Phase(p)) => {
                            if let Ok(phase @ (Phase::Initializing | Phase::Planning)) =
                                Phase::try_from(p.phase)
                            {
                                self.advance(phase);
                            }
                        }
                        Some(plan_response::Event::Saved(plan_saved)) => {
                            if let Some(control) = control.filter(|_| !saved) {
                                self.emit(job_event::Event::PlanSaved(plan_saved));
                                awaiting_decision = Some(control);
                                saved = true;
                            }
                        }
                        Some(plan_response::Event::Result(r)) => result = Some(r),
                        None => {}
                    },
                    Ok(None) => break,
                    Err(status) => return Err(self.call_failed("plan", &status)),
                }
            }
            Ok(())
        }
        .instrument(span)
        .await?;
        self.described(true).await?;
        let mut result = result.ok_or_else(|| self.stream_ended("plan"))?;
        // Phases never go back: after an early apply this changes nothing.
        self.advance(Phase::Planning);
        result.error = self.redactor.redact(&result.error);
        if !self.redactor.is_empty() {
            result.plan_json = self.redactor.redact(&result.plan_json);
        }
        // The workspace is stored before the result is reported so that a run waiting for
        // confirmation always has its workspace.
        if upload && result.success {
            self.upload(tree).await?;
        }
        self.emit(job_event::Event::PlanResult(result.clone()));
        Ok(Planned {
            result,
            saved,
            applying,
        })
    }

    /// Calls Apply; its stream is read by [`Job::apply`].
    async fn start_apply(
        &self,
        client: &mut RunnerClient,
        tree: &Path,
        parent: &tracing::Span,
    ) -> Result<Applying> {
        resolve_project_root(tree, &self.lease.project_root, &self.lease.commit_sha)?;
        let span = tracing::info_span!(
            parent: parent,
            "apply",
            run.id = %self.lease.run_id,
            stack.id = %self.lease.stack_id,
        );
        let mut request = tonic::Request::new(ApplyRequest {
            workspace: Some(self.workspace(tree)),
            targets: self.lease.targets.clone(),
            destroy: self.lease.destroy,
            skip_applying: self.lease.skip_applying,
        });
        cairn_telemetry::propagation::inject_span_into_metadata(&span, request.metadata_mut());
        let stream = client
            .apply(request)
            .instrument(span.clone())
            .await
            .map_err(|s| self.call_failed("apply", &s))?
            .into_inner();
        Ok(Applying { span, stream })
    }

    /// Applies: reads the stream of an Apply already `started`, or calls Apply now.
    async fn apply(
        &mut self,
        tree: &Path,
        plugin: &mut Option<PluginHandle>,
        started: Option<Applying>,
    ) -> Result<ApplyResult> {
        let Applying { span, mut stream } = match started {
            Some(started) => started,
            None => {
                let mut client = self.plugin_client(plugin).await?;
                self.start_apply(&mut client, tree, &tracing::Span::current())
                    .await?
            }
        };
        self.advance(Phase::Applying);
        let mut result = None;
        async {
            loop {
                let message = stream.message().await;
                self.described(false).await?;
                match message {
                    Ok(Some(message)) => match message.event {
                        Some(apply_response::Event::Log(line)) => self.log(line),
                        // Only the agent decides the phases of an apply job.
                        Some(apply_response::Event::Phase(_)) | None => {}
                        Some(apply_response::Event::Result(r)) => result = Some(r),
                    },
                    Ok(None) => break,
                    Err(status) => return Err(self.call_failed("apply", &status)),
                }
            }
            Ok(())
        }
        .instrument(span)
        .await?;
        self.described(true).await?;
        let mut result = result.ok_or_else(|| self.stream_ended("apply"))?;
        result.error = self.redactor.redact(&result.error);
        result.outputs_json = self.redactor.redact(&result.outputs_json);
        self.emit(job_event::Event::ApplyResult(result.clone()));
        Ok(result)
    }
}

/// The control plane's reason for a decision, as the run log appends it: ` (why)`, or nothing.
fn reason_suffix(decision: &ProceedJob) -> String {
    if decision.reason.is_empty() {
        String::new()
    } else {
        format!(" ({})", decision.reason)
    }
}

/// What [`Job::plan`] did.
struct Planned {
    result: PlanResult,
    /// The plugin's `PlanSaved` was passed on to the control plane.
    saved: bool,
    /// The apply the control plane decided on before the result, under way.
    applying: Option<Applying>,
}

/// An Apply call under way: its span and its stream, not yet read.
struct Applying {
    span: tracing::Span,
    stream: Streaming<ApplyResponse>,
}

/// `https://user:token@host/repo` → `https://host/repo`.
pub(crate) fn strip_credentials(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if let Some((_, host)) = authority.rsplit_once('@') {
            return format!("{scheme}://{host}{path}");
        }
    }
    url.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_stripped_from_urls() {
        assert_eq!(
            strip_credentials("https://x:tok@git.example.invalid/a/b.git"),
            "https://git.example.invalid/a/b.git"
        );
        assert_eq!(strip_credentials("/srv/repo"), "/srv/repo");
        assert_eq!(strip_credentials("ssh://git@host/r"), "ssh://host/r");
    }

    #[test]
    fn lease_ids_make_safe_dir_names() {
        assert_eq!(dir_name("lease-1_a"), "lease-1_a");
        assert_eq!(dir_name("../../etc").len(), 32);
        assert_eq!(dir_name("").len(), 32);
    }
}
