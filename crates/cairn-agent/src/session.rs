//! The long-lived Session stream: register, heartbeat, receive leases and cancels, send events.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_proto::agent::v1::agent_service_client::AgentServiceClient;
use cairn_proto::agent::v1::{
    job_event, session_request, session_response, Heartbeat, JobEvent, JobFailed, Lease, Register,
    SessionRequest,
};
use rand::Rng;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use crate::git::GitCache;
use crate::job::{self, JobControl, Shared, StopCause};
use crate::{Config, Error, Result};

/// Used when the control plane does not say how often to heartbeat.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// Used when the control plane does not say after how long it gives up a silent lease.
const DEFAULT_LEASE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the control plane may take to close the stream after the agent closed its half.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the control plane may take to answer Register.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the agent until `shutdown` resolves.
///
/// Dials `config.server_url`, registers with the pool token and keeps one Session stream open,
/// reconnecting with exponential backoff and jitter whenever it breaks; jobs keep running
/// across reconnects and their events are sent once the stream is back. On shutdown, running
/// jobs are stopped (reported as failed: the agent shut down), their last events are flushed
/// for up to `cancel_grace` plus a few seconds, and `run` returns `Ok(())`.
///
/// Returns an error only for a bad configuration (no token, unusable work dir, bad URL) or when
/// the control plane rejects the agent's credentials; a failing job never ends the agent.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let token = config.validate()?;
    let jobs_dir = config.work_dir.join("jobs");
    let repos_dir = config.work_dir.join("repos");
    std::fs::create_dir_all(&config.work_dir).map_err(|source| Error::WorkDir {
        path: config.work_dir.clone(),
        source,
    })?;
    let _work_dir_lock = lock_work_dir(&config.work_dir)?;
    // Work trees left by an agent that died hold plan files and sometimes secrets; no job of
    // this process can be using them yet. (One work_dir per agent process.)
    match std::fs::remove_dir_all(&jobs_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(Error::WorkDir {
                path: jobs_dir,
                source,
            })
        }
    }
    for dir in [&jobs_dir, &repos_dir] {
        std::fs::create_dir_all(dir).map_err(|source| Error::WorkDir {
            path: dir.clone(),
            source,
        })?;
    }
    let endpoint = Endpoint::from_shared(config.server_url.clone())
        .map_err(|e| Error::Config(format!("server_url `{}`: {e}", config.server_url)))?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let channel = endpoint.connect_lazy();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let max_jobs = usize::try_from(config.max_jobs)
        .unwrap_or(usize::MAX)
        .max(1);
    let agent = Agent {
        shared: Arc::new(Shared {
            git: GitCache::new(repos_dir),
            jobs_dir,
            token,
            channel,
            config,
        }),
        endpoint,
        events_tx,
        jobs: Arc::new(Mutex::new(HashMap::new())),
        job_done: Arc::new(Notify::new()),
        slots: Arc::new(Semaphore::new(max_jobs)),
    };
    let stop = CancellationToken::new();
    let main = agent.main_loop(events_rx, stop.clone());
    tokio::pin!(main);
    tokio::select! {
        r = &mut main => return r,
        () = shutdown => stop.cancel(),
    }
    main.await
}

/// Holds an exclusive lock on `<work_dir>/.lock` for as long as the agent runs.
fn lock_work_dir(work_dir: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let path = work_dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| Error::WorkDir {
            path: path.clone(),
            source,
        })?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| {
            if errno == nix::errno::Errno::EWOULDBLOCK {
                Error::Config(format!(
                    "work_dir {} is in use by another agent; give each agent its own",
                    work_dir.display()
                ))
            } else {
                Error::WorkDir {
                    path,
                    source: std::io::Error::from(errno),
                }
            }
        },
    )
}

struct Agent {
    shared: Arc<Shared>,
    endpoint: Endpoint,
    events_tx: mpsc::UnboundedSender<JobEvent>,
    jobs: Arc<Mutex<HashMap<String, Arc<JobControl>>>>,
    job_done: Arc<Notify>,
    /// One permit per job slot, held until a job has fully ended (plugin stopped, work tree
    /// removed). The control plane frees its slot at the job's result, a moment earlier, so a
    /// lease may arrive while the previous job is still cleaning up: it waits for the permit
    /// instead of being refused.
    slots: Arc<Semaphore>,
}

enum SessionEnd {
    /// The stream broke; reconnect. `registered` resets the backoff.
    Broken { registered: bool, why: String },
    /// Shutdown finished on this session.
    Drained,
}

/// Exponential backoff with full jitter between `min` and the current ceiling.
struct Backoff {
    min: Duration,
    max: Duration,
    ceiling: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            ceiling: min,
        }
    }

    fn reset(&mut self) {
        self.ceiling = self.min;
    }

    fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (self.ceiling * 2).min(self.max);
        let low = self.min.as_millis() as u64;
        let high = (ceiling.as_millis() as u64).max(low);
        Duration::from_millis(rand::thread_rng().gen_range(low..=high))
    }
}

impl Agent {
    fn lease_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        ids.sort();
        ids
    }

    fn vendors(&self) -> Vec<String> {
        let mut vendors: Vec<String> = self
            .shared
            .config
            .plugin_path
            .iter()
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .flatten()
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let name = entry.file_name().into_string().ok()?;
                let vendor = name.strip_prefix("cairn-runner-")?;
                use std::os::unix::fs::PermissionsExt;
                let meta = std::fs::metadata(entry.path()).ok()?;
                (meta.is_file() && meta.permissions().mode() & 0o111 != 0 && !vendor.contains('.'))
                    .then(|| vendor.to_owned())
            })
            .collect();
        vendors.sort();
        vendors.dedup();
        vendors
    }

    async fn main_loop(
        &self,
        mut events_rx: mpsc::UnboundedReceiver<JobEvent>,
        stop: CancellationToken,
    ) -> Result<()> {
        let config = &self.shared.config;
        let mut backoff = Backoff::new(config.reconnect_min, config.reconnect_max);
        // Events taken from the queue whose send failed; they go first on the next session.
        let mut unsent: VecDeque<JobEvent> = VecDeque::new();
        loop {
            match self.session(&mut events_rx, &mut unsent, &stop).await {
                Ok(SessionEnd::Drained) => return Ok(()),
                Ok(SessionEnd::Broken { registered, why }) => {
                    if registered {
                        backoff.reset();
                    }
                    tracing::warn!("session with the control plane ended: {why}");
                }
                Err(e @ Error::Rejected(_)) => {
                    self.stop_all(StopCause::Shutdown);
                    return Err(e);
                }
                Err(e) => tracing::warn!("{e}"),
            }
            if stop.is_cancelled() {
                // No control plane to report to: stop the jobs and leave.
                self.stop_all(StopCause::Shutdown);
                self.wait_for_jobs().await;
                return Ok(());
            }
            let delay = backoff.next_delay();
            tracing::info!("reconnecting in {delay:?}");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => {}
            }
        }
    }

    fn stop_all(&self, cause: StopCause) {
        for control in self.jobs.lock().unwrap_or_else(|e| e.into_inner()).values() {
            control.stop(cause);
        }
    }

    async fn wait_for_jobs(&self) {
        let deadline = self.shared.config.cancel_grace + Duration::from_secs(5);
        let _ = tokio::time::timeout(deadline, async {
            while !self
                .jobs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
            {
                self.job_done.notified().await;
            }
        })
        .await;
    }

    async fn session(
        &self,
        events_rx: &mut mpsc::UnboundedReceiver<JobEvent>,
        unsent: &mut VecDeque<JobEvent>,
        stop: &CancellationToken,
    ) -> Result<SessionEnd> {
        if stop.is_cancelled()
            && self
                .jobs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
        {
            return Ok(SessionEnd::Drained);
        }
        let config = &self.shared.config;
        let channel = self
            .endpoint
            .connect()
            .await
            .map_err(|e| Error::Connect(format!("{}: {e}", config.server_url)))?;
        let mut client = AgentServiceClient::new(channel);
        let (tx, rx) = mpsc::channel::<SessionRequest>(64);
        let register = SessionRequest {
            message: Some(session_request::Message::Register(Register {
                pool_token: self.shared.token.clone(),
                name: config.name.clone(),
                labels: config.labels.clone(),
                max_jobs: i32::try_from(config.max_jobs).unwrap_or(i32::MAX),
                agent_version: env!("CARGO_PKG_VERSION").to_owned(),
                vendors: self.vendors(),
            })),
        };
        tx.send(register)
            .await
            .map_err(|_| Error::Session("outgoing stream closed".into()))?;
        let response = client
            .session(
                self.shared
                    .request(tokio_stream::wrappers::ReceiverStream::new(rx)),
            )
            .await;
        let mut inbound = match response {
            Ok(r) => r.into_inner(),
            Err(status) => return Err(classify(status)),
        };
        let registered = match tokio::time::timeout(REGISTER_TIMEOUT, inbound.message()).await {
            Err(_) => return Err(Error::Session("no answer to Register".into())),
            Ok(Err(status)) => return Err(classify(status)),
            Ok(Ok(None)) => return Err(Error::Session("stream closed before Registered".into())),
            Ok(Ok(Some(msg))) => match msg.message {
                Some(session_response::Message::Registered(r)) => r,
                other => {
                    return Err(Error::Session(format!(
                        "expected Registered as the first message, got {other:?}"
                    )))
                }
            },
        };
        let interval = u64::try_from(registered.heartbeat_interval_ms)
            .ok()
            .filter(|ms| *ms > 0)
            .map_or(DEFAULT_HEARTBEAT, Duration::from_millis);
        let lease_timeout = u64::try_from(registered.lease_timeout_ms)
            .ok()
            .filter(|ms| *ms > 0)
            .map_or(DEFAULT_LEASE_TIMEOUT, Duration::from_millis);
        tracing::info!(
            worker.id = %registered.worker_id,
            pool.id = %registered.pool_id,
            "registered with the control plane; heartbeat every {interval:?}"
        );

        let broken = |why: String| {
            Ok(SessionEnd::Broken {
                registered: true,
                why,
            })
        };
        // The first heartbeat tells the control plane which jobs are still running, so that it
        // re-adopts their leases for this session before any of their (queued) events arrive:
        // events of a lease it does not know make it cancel the job.
        let beat = SessionRequest {
            message: Some(session_request::Message::Heartbeat(Heartbeat {
                lease_ids: self.lease_ids(),
            })),
        };
        if tx.send(beat).await.is_err() {
            return broken("outgoing stream closed".into());
        }
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut draining = false;
        let mut drain_deadline = None;
        loop {
            if !draining && stop.is_cancelled() {
                draining = true;
                tracing::info!("shutting down: stopping running jobs");
                self.stop_all(StopCause::Shutdown);
                drain_deadline = Some(
                    tokio::time::Instant::now() + config.cancel_grace + Duration::from_secs(5),
                );
            }
            while let Some(event) = unsent.pop_front() {
                if let Err(e) = tx.send(wrap(event)).await {
                    unsent.push_front(unwrap(e.0));
                    return broken("outgoing stream closed".into());
                }
            }
            if draining
                && self
                    .jobs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty()
                && events_rx.is_empty()
            {
                // Closing our half and waiting for the control plane to close its half means it
                // has read every event sent, the jobs' last words included.
                drop(tx);
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                    while let Ok(Some(_)) = inbound.message().await {}
                })
                .await;
                return Ok(SessionEnd::Drained);
            }
            let deadline = async {
                match drain_deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.cancelled(), if !draining => {}
                () = deadline => {
                    tracing::warn!("jobs did not stop in time; leaving anyway");
                    return Ok(SessionEnd::Drained);
                }
                () = self.job_done.notified(), if draining => {}
                _ = heartbeat.tick() => {
                    let beat = SessionRequest {
                        message: Some(session_request::Message::Heartbeat(Heartbeat {
                            lease_ids: self.lease_ids(),
                        })),
                    };
                    if tx.send(beat).await.is_err() {
                        return broken("outgoing stream closed".into());
                    }
                }
                event = events_rx.recv() => {
                    let Some(event) = event else { return Ok(SessionEnd::Drained) };
                    if let Err(e) = tx.send(wrap(event)).await {
                        unsent.push_front(unwrap(e.0));
                        return broken("outgoing stream closed".into());
                    }
                }
                message = inbound.message() => match message {
                    Ok(Some(message)) => match message.message {
                        Some(session_response::Message::Lease(lease)) => {
                            if draining {
                                self.refuse(&lease, "the agent is shutting down");
                            } else {
                                self.start(lease, lease_timeout);
                            }
                        }
                        Some(session_response::Message::Cancel(cancel)) => {
                            let control = self
                                .jobs
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get(&cancel.lease_id)
                                .cloned();
                            match control {
                                Some(control) => {
                                    tracing::info!(
                                        lease.id = %cancel.lease_id,
                                        "cancel requested: {}", cancel.reason
                                    );
                                    control.stop(StopCause::Cancelled);
                                }
                                None => tracing::debug!(
                                    lease.id = %cancel.lease_id,
                                    "cancel for a job this agent does not run"
                                ),
                            }
                        }
                        Some(session_response::Message::Proceed(proceed)) => {
                            let control = self
                                .jobs
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get(&proceed.lease_id)
                                .cloned();
                            match control {
                                Some(control) => {
                                    tracing::info!(
                                        lease.id = %proceed.lease_id,
                                        apply = proceed.apply,
                                        upload = proceed.upload_workspace,
                                        "decision after the plan: {}", proceed.reason
                                    );
                                    control.decide(proceed);
                                }
                                None => tracing::debug!(
                                    lease.id = %proceed.lease_id,
                                    "decision for a job this agent does not run"
                                ),
                            }
                        }
                        Some(session_response::Message::Registered(_)) | None => {}
                    },
                    Ok(None) => return broken("the control plane closed the stream".into()),
                    Err(status) => return broken(status.to_string()),
                },
            }
        }
    }

    fn refuse(&self, lease: &Lease, reason: &str) {
        tracing::warn!(lease.id = %lease.lease_id, "refusing lease: {reason}");
        let _ = self
            .events_tx
            .send(failed(&lease.lease_id, &lease.run_id, reason.to_owned()));
    }

    fn start(&self, lease: Lease, decision_timeout: Duration) {
        let control = Arc::new(JobControl::new(decision_timeout));
        {
            let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
            if jobs.contains_key(&lease.lease_id) {
                // A control plane that re-sends a lease after a reconnect gets the running job.
                tracing::debug!(lease.id = %lease.lease_id, "lease already running");
                return;
            }
            // Listed at once so that heartbeats keep the lease alive and a cancel finds it
            // while it waits for a slot.
            jobs.insert(lease.lease_id.clone(), Arc::clone(&control));
        }
        let shared = Arc::clone(&self.shared);
        let events = self.events_tx.clone();
        let jobs = Arc::clone(&self.jobs);
        let done = Arc::clone(&self.job_done);
        let slots = Arc::clone(&self.slots);
        // A job that has reported its result ends within the plugin's grace period.
        let slot_wait = self.shared.config.cancel_grace + Duration::from_secs(5);
        let max_jobs = self.shared.config.max_jobs;
        let lease_id = lease.lease_id.clone();
        let run_id = lease.run_id.clone();
        tokio::spawn(async move {
            let permit = match Arc::clone(&slots).try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => tokio::select! {
                    p = tokio::time::timeout(slot_wait, slots.acquire_owned()) => p.ok().and_then(Result::ok),
                    () = control.cancel.cancelled() => None,
                },
            };
            let failure = match permit {
                None if control.cancel.is_cancelled() => {
                    Some("the job was cancelled before it started".to_owned())
                }
                None => Some(format!(
                    "the agent already runs its maximum of {max_jobs} jobs"
                )),
                // A panic inside a job must not take the agent down or leak its lease slot.
                Some(_permit) => tokio::spawn(job::run(shared, lease, events.clone(), control))
                    .await
                    .err()
                    .map(|e| {
                        tracing::error!(lease.id = %lease_id, "job task panicked: {e}");
                        "internal agent error: the job task panicked".to_owned()
                    }),
            };
            if let Some(reason) = failure {
                tracing::warn!(lease.id = %lease_id, "lease ends without a job result: {reason}");
                let _ = events.send(failed(&lease_id, &run_id, reason));
            }
            jobs.lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&lease_id);
            done.notify_one();
        });
    }
}

/// The one terminal event of a lease the agent could not run to its end by itself.
fn failed(lease_id: &str, run_id: &str, reason: String) -> JobEvent {
    JobEvent {
        lease_id: lease_id.to_owned(),
        run_id: run_id.to_owned(),
        event: Some(job_event::Event::Failed(JobFailed { reason })),
    }
}

fn wrap(event: JobEvent) -> SessionRequest {
    SessionRequest {
        message: Some(session_request::Message::JobEvent(event)),
    }
}

fn unwrap(request: SessionRequest) -> JobEvent {
    match request.message {
        Some(session_request::Message::JobEvent(event)) => event,
        _ => JobEvent::default(),
    }
}

fn classify(status: tonic::Status) -> Error {
    match status.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
            Error::Rejected(status.message().to_owned())
        }
        _ => Error::Session(status.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_within_bounds_and_resets() {
        let min = Duration::from_millis(100);
        let max = Duration::from_millis(1600);
        let mut b = Backoff::new(min, max);
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            let d = b.next_delay();
            assert!(d >= min && d <= max);
            ceilings.push(b.ceiling);
        }
        assert_eq!(*ceilings.last().unwrap(), max);
        b.reset();
        assert_eq!(b.ceiling, min);
    }
}
