//! Connected agents, their leases, and the scheduler that hands runs to them.
//!
//! Protocol (cairn.agent.v1.AgentService/Session), as this server drives it:
//! - The agent's first message is `Register` with its pool token; the answer is `Registered`
//!   (worker id, heartbeat interval, lease timeout). A bad token ends the call UNAUTHENTICATED.
//! - The scheduler sends `Lease`s while the agent has free slots (`max_jobs`). Kinds:
//!   - `JOB_KIND_PLAN` for QUEUED / REPLAN_REQUESTED runs (→ PREPARING). Tracked runs and tasks
//!     come with `upload_workspace`: after `plan_result` the agent uploads the encrypted workspace
//!     with UploadWorkspace and reports `workspace_stored`; the lease ends then. Proposed runs
//!     upload nothing and the lease ends with the plan result.
//!   - `JOB_KIND_PLAN_AND_APPLY` for tracked runs of autodeploy stacks: one lease plans and,
//!     if the server says so, applies in the same work tree (no archive round trip). The lease
//!     carries the run's `workspace_key` and `upload_workspace`. After `plan_result` the server
//!     decides the path with `cairn_core::after_planning` (autodeploy as the stack has it now)
//!     and answers with `ProceedJob`; a job with changes waits for it (up to the lease timeout):
//!     - Autodeploy → run PREPARING_APPLY, `apply: true`; the agent goes on with
//!       `PHASE_APPLYING` and `apply_result`.
//!     - RequireConfirmation / RequireReview → `apply: false, upload_workspace: true`; the run
//!       stays PLANNING until `workspace_stored`, then moves to UNCONFIRMED / PENDING_REVIEW (so
//!       such a run always has its workspace) and the lease ends. Confirming leases an APPLY.
//!     - Fail / FinishNoOp, or a run that moved meanwhile (stopped) → `apply: false`; the lease
//!       ends.
//!   - `JOB_KIND_APPLY` for CONFIRMED runs (→ PREPARING_APPLY), with the `artifact_id` and the
//!     run's data key (`workspace_key`) to restore the workspace with DownloadWorkspace.
//! - Job events: phases move the run (INITIALIZING → Initialize, PLANNING → Plan, APPLYING →
//!   Apply; skipped ones are filled in); log lines are masked, numbered, stored and broadcast;
//!   `failed` fails the run with its reason; `stopped` just ends the lease (StopRun already
//!   moved the run to STOPPED and sent `CancelJob`).
//! - Heartbeats list the leases still held and refresh them. A lease whose last heartbeat is
//!   older than `lease_timeout` expires: its run fails with "worker lost: lease expired" and
//!   the stack takes its next run.
//! - Reconnects: a closed session's leases are kept as orphans. When a new session of a worker
//!   with the same pool and name lists one in a heartbeat (or sends an event for it) before it
//!   expires, the lease is re-adopted: the stored lease now names the new worker, its events
//!   are accepted, a ProceedJob already decided is sent again, and a job whose run ended
//!   meanwhile gets `CancelJob`. After a server restart the slot is rebuilt from the store.
//!   Leases nobody re-adopts expire as above.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_core::{
    after_planning, dispatch_order, Change, Delta, LeaseKind, Phase, PlanOutcome, Run, RunEvent,
    RunMode, RunPatch, RunState, RunType, Stack, Worker,
};
use cairn_proto::agent::v1 as apb;
use cairn_proto::runner::v1 as rpb;
use tokio::sync::mpsc;
use tonic::Status;

use crate::convert;
use crate::error::{Result, ServerError};
use crate::state::AppState;

pub type Outbound = mpsc::Sender<Result<apb::SessionResponse, Status>>;

/// One leased job as the server tracks it while the agent works on it.
struct Slot {
    run_id: String,
    stack_id: String,
    kind: apb::JobKind,
    /// Secret values to mask in this job's log lines.
    secrets: Vec<String>,
    needs_upload: bool,
    uploaded: bool,
    /// The span of the phase the run is in; replaced at each phase, closed when the lease ends.
    phase_span: Option<tracing::Span>,
    /// The ProceedJob sent after a PLAN_AND_APPLY plan; sent again when the lease is re-adopted
    /// by a new session (the first copy may have been lost with the old stream).
    decision: Option<apb::ProceedJob>,
    /// The post-plan transition of a PLAN_AND_APPLY run that waits for confirmation: applied
    /// once the workspace is stored, so that an UNCONFIRMED run always has its workspace.
    deferred: Option<(RunEvent, RunPatch)>,
}

/// A lease whose session closed: kept until a new session of the same worker (pool and name)
/// re-adopts it, or until it expires.
struct Orphan {
    pool_id: String,
    name: String,
    slot: Slot,
}

struct Conn {
    pool_id: String,
    name: String,
    max_jobs: usize,
    vendors: Vec<String>,
    tx: Outbound,
    slots: HashMap<String, Slot>,
}

/// The agents connected to this server.
#[derive(Default)]
pub struct Registry {
    conns: Mutex<HashMap<String, Conn>>,
    /// By lease id. Locked after `conns` when both are needed, never the other way round.
    orphans: Mutex<HashMap<String, Orphan>>,
}

/// What ListWorkers shows of a live connection.
pub struct LiveWorker {
    pub run_ids: Vec<String>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Conn>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn live(&self, worker_id: &str) -> Option<LiveWorker> {
        self.lock().get(worker_id).map(|c| LiveWorker {
            run_ids: c.slots.values().map(|s| s.run_id.clone()).collect(),
        })
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The agent of `pool` with a free slot and the fewest jobs that can run `vendor`.
    fn pick(&self, pool: &str, vendor: &str) -> Option<String> {
        self.lock()
            .iter()
            .filter(|(_, c)| c.pool_id == pool && c.slots.len() < c.max_jobs)
            .filter(|(_, c)| c.vendors.is_empty() || c.vendors.iter().any(|v| v == vendor))
            .min_by_key(|(id, c)| (c.slots.len(), (*id).clone()))
            .map(|(id, _)| id.clone())
    }

    fn sender(&self, worker_id: &str) -> Option<Outbound> {
        self.lock().get(worker_id).map(|c| c.tx.clone())
    }

    fn orphans(&self) -> std::sync::MutexGuard<'_, HashMap<String, Orphan>> {
        self.orphans.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(&self, worker_id: &str, lease_id: &str) -> Option<Outbound> {
        let mut map = self.lock();
        self.orphans().remove(lease_id);
        let conn = map.get_mut(worker_id)?;
        conn.slots.remove(lease_id);
        Some(conn.tx.clone())
    }

    /// Removes a closed session; its leases wait as orphans for the agent to come back.
    fn close(&self, worker_id: &str) {
        let mut map = self.lock();
        let Some(conn) = map.remove(worker_id) else {
            return;
        };
        let mut orphans = self.orphans();
        for (lease_id, slot) in conn.slots {
            orphans.insert(
                lease_id,
                Orphan {
                    pool_id: conn.pool_id.clone(),
                    name: conn.name.clone(),
                    slot,
                },
            );
        }
    }

    /// Moves the slot of `lease_id` to `worker_id` when another session of the same pool and
    /// name holds it (a session the agent left but the server has not noticed closing yet) or
    /// it is orphaned. False when there is nothing to take or `worker_id` is gone.
    fn take_over(&self, worker_id: &str, lease_id: &str) -> bool {
        let mut map = self.lock();
        let Some((pool_id, name)) = map
            .get(worker_id)
            .map(|c| (c.pool_id.clone(), c.name.clone()))
        else {
            return false;
        };
        let from_live = map
            .iter_mut()
            .filter(|(id, c)| id.as_str() != worker_id && c.pool_id == pool_id && c.name == name)
            .find_map(|(_, c)| c.slots.remove(lease_id));
        let slot = match from_live {
            Some(slot) => slot,
            None => {
                let mut orphans = self.orphans();
                match orphans.get(lease_id) {
                    Some(o) if o.pool_id == pool_id && o.name == name => {
                        match orphans.remove(lease_id) {
                            Some(o) => o.slot,
                            None => return false,
                        }
                    }
                    _ => return false,
                }
            }
        };
        if let Some(conn) = map.get_mut(worker_id) {
            conn.slots.insert(lease_id.to_string(), slot);
        }
        true
    }

    /// Adds a slot rebuilt from the store (after a server restart) unless one exists.
    fn insert_slot(&self, worker_id: &str, lease_id: &str, slot: Slot) -> bool {
        let mut map = self.lock();
        match map.get_mut(worker_id) {
            Some(conn) if !conn.slots.contains_key(lease_id) => {
                conn.slots.insert(lease_id.to_string(), slot);
                true
            }
            _ => false,
        }
    }

    /// Who holds the leases of a run (StopRun).
    fn holders_of(&self, run_id: &str) -> Vec<(String, Outbound)> {
        self.lock()
            .values()
            .flat_map(|c| {
                c.slots
                    .iter()
                    .filter(|(_, s)| s.run_id == run_id)
                    .map(|(lease_id, _)| (lease_id.clone(), c.tx.clone()))
            })
            .collect()
    }
}

/// Asks whichever agent holds `run_id` to stop it.
pub async fn cancel_run_jobs(state: &AppState, run_id: &str, reason: &str) {
    for (lease_id, tx) in state.agents.holders_of(run_id) {
        let _ = tx.send(Ok(cancel_msg(&lease_id, run_id, reason))).await;
    }
}

fn cancel_msg(lease_id: &str, run_id: &str, reason: &str) -> apb::SessionResponse {
    apb::SessionResponse {
        message: Some(apb::session_response::Message::Cancel(apb::CancelJob {
            lease_id: lease_id.to_string(),
            run_id: run_id.to_string(),
            reason: reason.to_string(),
        })),
    }
}

/// The control plane's word on a PLAN_AND_APPLY job after its plan, with the reason.
enum Decision<'a> {
    /// Apply in the same work tree.
    Apply(&'a str),
    /// Do not apply; upload the workspace (the run waits for confirmation or review).
    Keep(&'a str),
    /// Do not apply; nothing to keep.
    Drop(&'a str),
}

impl Decision<'_> {
    fn message(&self, lease_id: &str, run_id: &str) -> apb::ProceedJob {
        let (apply, upload_workspace, reason) = match self {
            Decision::Apply(r) => (true, false, r),
            Decision::Keep(r) => (false, true, r),
            Decision::Drop(r) => (false, false, r),
        };
        apb::ProceedJob {
            lease_id: lease_id.to_string(),
            run_id: run_id.to_string(),
            apply,
            upload_workspace,
            reason: reason.to_string(),
        }
    }
}

fn proceed_msg(p: apb::ProceedJob) -> apb::SessionResponse {
    apb::SessionResponse {
        message: Some(apb::session_response::Message::Proceed(p)),
    }
}

/// A slot for a stored lease the registry does not know (the server restarted while the job
/// ran). The kind follows the rule the scheduler used; secrets come from the stack's variables.
async fn rebuild_slot(state: &AppState, lease: &cairn_core::Lease) -> Result<Slot> {
    let run = state.store.get_run(&lease.run_id).await?;
    let stack = state.store.get_stack(&lease.stack_id).await?;
    let kind = match lease.kind {
        LeaseKind::Apply => apb::JobKind::Apply,
        LeaseKind::Plan if stack.autodeploy && run.run_type == RunType::Tracked => {
            apb::JobKind::PlanAndApply
        }
        LeaseKind::Plan => apb::JobKind::Plan,
    };
    let secrets = state
        .store
        .list_env_vars(&stack.id)
        .await?
        .into_iter()
        .filter(|v| v.secret && !v.value.is_empty())
        .map(|v| v.value)
        .collect();
    Ok(Slot {
        run_id: run.id,
        stack_id: stack.id,
        kind,
        secrets,
        needs_upload: kind == apb::JobKind::Plan && run.run_type != RunType::Proposed,
        uploaded: false,
        phase_span: None,
        decision: None,
        deferred: None,
    })
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Accepts a registered agent and returns its outbound stream's receiver; the inbound stream is
/// served by a task until it ends or the server shuts down.
pub async fn start_session(
    state: Arc<AppState>,
    mut inbound: tonic::Streaming<apb::SessionRequest>,
) -> Result<mpsc::Receiver<Result<apb::SessionResponse, Status>>, Status> {
    let first = inbound
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("session closed before Register"))?;
    let reg = match first.message {
        Some(apb::session_request::Message::Register(r)) => r,
        _ => {
            return Err(Status::invalid_argument(
                "register: the first message must be Register",
            ))
        }
    };
    let pool = crate::services::agent::pool_for_token(&state, &reg.pool_token).await?;
    let worker_id = cairn_core::ids::new_id("wrk");
    let name = if reg.name.trim().is_empty() {
        worker_id.clone()
    } else {
        reg.name.chars().take(256).collect()
    };
    let max_jobs = reg.max_jobs.clamp(1, 1024);
    let now = cairn_core::now_nanos();
    state
        .store
        .upsert_worker(Worker {
            id: worker_id.clone(),
            pool_id: pool.id.clone(),
            name: name.clone(),
            labels: reg.labels.clone(),
            max_jobs,
            last_heartbeat_at: now,
            connected: true,
        })
        .await
        .map_err(ServerError::from)?;
    let (tx, rx) = mpsc::channel(256);
    tx.send(Ok(apb::SessionResponse {
        message: Some(apb::session_response::Message::Registered(
            apb::Registered {
                worker_id: worker_id.clone(),
                pool_id: pool.id.clone(),
                heartbeat_interval_ms: millis(state.config.heartbeat_interval),
                lease_timeout_ms: millis(state.config.lease_timeout),
            },
        )),
    }))
    .await
    .map_err(|_| Status::cancelled("agent went away"))?;
    state.agents.lock().insert(
        worker_id.clone(),
        Conn {
            pool_id: pool.id.clone(),
            name: name.clone(),
            max_jobs: max_jobs as usize,
            vendors: reg.vendors.clone(),
            tx,
            slots: HashMap::new(),
        },
    );
    tracing::info!(worker.id = %worker_id, worker.name = %name, pool.id = %pool.id, "agent registered");
    state.wake_scheduler();

    let session = Session {
        state: state.clone(),
        worker_id,
        pool_id: pool.id,
        name,
        labels: reg.labels,
        max_jobs,
    };
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                m = inbound.message() => m,
                _ = session.state.shutdown.cancelled() => break,
            };
            match msg {
                Ok(Some(m)) => {
                    if let Err(e) = session.handle(m).await {
                        tracing::warn!(worker.id = %session.worker_id, error = %e, "agent message failed");
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::info!(worker.id = %session.worker_id, %status, "agent stream ended");
                    break;
                }
            }
        }
        session.close().await;
    });
    Ok(rx)
}

struct Session {
    state: Arc<AppState>,
    worker_id: String,
    pool_id: String,
    name: String,
    labels: Vec<String>,
    max_jobs: i32,
}

impl Session {
    async fn close(&self) {
        // Dropping the registry entry drops the last sender: the outbound stream ends. Its
        // leases wait for the agent to reconnect (or expire).
        self.state.agents.close(&self.worker_id);
        let _ = self.upsert(false).await;
        tracing::info!(worker.id = %self.worker_id, "agent disconnected");
        self.state.wake_scheduler();
    }

    async fn upsert(&self, connected: bool) -> Result<()> {
        self.state
            .store
            .upsert_worker(Worker {
                id: self.worker_id.clone(),
                pool_id: self.pool_id.clone(),
                name: self.name.clone(),
                labels: self.labels.clone(),
                max_jobs: self.max_jobs,
                last_heartbeat_at: cairn_core::now_nanos(),
                connected,
            })
            .await?;
        Ok(())
    }

    async fn handle(&self, msg: apb::SessionRequest) -> Result<()> {
        use apb::session_request::Message as M;
        match msg.message {
            Some(M::Register(_)) => Err(ServerError::invalid(
                "register",
                "the session is already registered",
            )),
            Some(M::Heartbeat(hb)) => {
                self.adopt(&hb.lease_ids, true).await?;
                let held: Vec<String> = {
                    let map = self.state.agents.lock();
                    let Some(conn) = map.get(&self.worker_id) else {
                        return Ok(());
                    };
                    hb.lease_ids
                        .into_iter()
                        .filter(|id| conn.slots.contains_key(id))
                        .collect()
                };
                let now = cairn_core::now_nanos();
                self.state
                    .store
                    .heartbeat_leases(&self.worker_id, &held, now)
                    .await?;
                self.upsert(true).await
            }
            Some(M::JobEvent(ev)) => self.job_event(ev).await,
            None => Ok(()),
        }
    }

    /// The slot's run, kind and secrets, or None when this agent does not hold the lease.
    fn slot(&self, lease_id: &str) -> Option<(String, String, apb::JobKind, Vec<String>)> {
        let map = self.state.agents.lock();
        let s = map.get(&self.worker_id)?.slots.get(lease_id)?;
        Some((
            s.run_id.clone(),
            s.stack_id.clone(),
            s.kind,
            s.secrets.clone(),
        ))
    }

    fn with_slot(&self, lease_id: &str, f: impl FnOnce(&mut Slot)) {
        let mut map = self.state.agents.lock();
        if let Some(s) = map
            .get_mut(&self.worker_id)
            .and_then(|c| c.slots.get_mut(lease_id))
        {
            f(s);
        }
    }

    async fn send(&self, msg: apb::SessionResponse) {
        if let Some(tx) = self.state.agents.sender(&self.worker_id) {
            let _ = tx.send(Ok(msg)).await;
        }
    }

    async fn job_event(&self, ev: apb::JobEvent) -> Result<()> {
        use apb::job_event::Event as E;
        if self.slot(&ev.lease_id).is_none() {
            // An agent that reconnected may send queued events before its first heartbeat.
            self.adopt(std::slice::from_ref(&ev.lease_id), false)
                .await?;
        }
        let Some((run_id, stack_id, kind, secrets)) = self.slot(&ev.lease_id) else {
            // An expired or foreign lease: the job must stop, its results count for nothing.
            self.send(cancel_msg(
                &ev.lease_id,
                &ev.run_id,
                "lease unknown or expired",
            ))
            .await;
            return Ok(());
        };
        if !ev.run_id.is_empty() && ev.run_id != run_id {
            return Err(ServerError::invalid(
                "job_event.run_id",
                "does not match the lease",
            ));
        }
        match ev.event {
            Some(E::Phase(p)) => self.phase(&ev.lease_id, &run_id, &stack_id, p).await,
            Some(E::Log(line)) => {
                let message = mask(&line.message, &secrets);
                self.state
                    .append_logs(
                        &run_id,
                        vec![(
                            convert::phase_from(line.phase),
                            convert::log_stream_from(line.stream),
                            message,
                        )],
                    )
                    .await
            }
            Some(E::PlanSaved(_)) => self.plan_saved(&ev.lease_id, &run_id, kind).await,
            Some(E::PlanResult(r)) => self.plan_result(&ev.lease_id, &run_id, kind, r).await,
            Some(E::ApplyResult(r)) => self.apply_result(&ev.lease_id, &run_id, r).await,
            Some(E::Failed(f)) => {
                let reason = mask(&f.reason, &secrets);
                fail_run(&self.state, &run_id, &reason).await;
                self.end_lease(&ev.lease_id).await
            }
            Some(E::Stopped(_)) => {
                let mut deferred = false;
                self.with_slot(&ev.lease_id, |s| deferred = s.deferred.is_some());
                if deferred {
                    // Stopped while keeping the workspace for a confirmation that will not come.
                    let run = self.state.store.get_run(&run_id).await?;
                    self.state
                        .artifacts
                        .delete_run(&run_id, &run.artifact_id)
                        .await;
                }
                self.end_lease(&ev.lease_id).await
            }
            Some(E::WorkspaceStored(_)) => {
                let mut deferred = None;
                self.with_slot(&ev.lease_id, |s| {
                    s.uploaded = true;
                    deferred = s.deferred.take();
                });
                if let Some((event, patch)) = deferred {
                    // The workspace is in: the run may now wait for confirmation or review.
                    if let Err(e) = self.state.transition(&run_id, event, "", patch).await {
                        tracing::info!(run.id = %run_id, error = %e, "plan outcome not applied");
                        let run = self.state.store.get_run(&run_id).await?;
                        self.state
                            .artifacts
                            .delete_run(&run_id, &run.artifact_id)
                            .await;
                    }
                    return self.end_lease(&ev.lease_id).await;
                }
                crate::deployments::workspace_stored(&self.state, &run_id).await;
                let run = self.state.store.get_run(&run_id).await?;
                if !drives(kind, run.state) {
                    self.end_lease(&ev.lease_id).await?;
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn phase(
        &self,
        lease_id: &str,
        run_id: &str,
        stack_id: &str,
        p: rpb::PhaseEvent,
    ) -> Result<()> {
        let Some(phase) = convert::phase_from(p.phase) else {
            return Ok(());
        };
        let target = match phase {
            Phase::Preparing => None,
            Phase::Initializing => Some(RunState::Initializing),
            Phase::Planning => Some(RunState::Planning),
            Phase::Applying => Some(RunState::Applying),
        };
        let mut state = self.state.store.get_run(run_id).await?.state;
        if let Some(target) = target {
            state = advance_to(&self.state, run_id, state, target).await;
        }
        let span = phase_span(&self.state, run_id, stack_id, state, phase);
        self.with_slot(lease_id, |s| s.phase_span = Some(span));
        Ok(())
    }

    /// The plugin saved a plan with changes and still reads its details. Applying it needs
    /// none of them when the stack autodeploys and no plan policy applies to it (no document
    /// to judge, so no denial and no warning), and for an ordinary run (a deployment run's
    /// cycles count on the plan): then the run moves on now and the agent applies while the
    /// details come in, which spares an autodeploy run one `show` on its way. Otherwise
    /// nothing happens here and [`Self::plan_result`] decides as usual.
    async fn plan_saved(&self, lease_id: &str, run_id: &str, kind: apb::JobKind) -> Result<()> {
        if kind != apb::JobKind::PlanAndApply {
            return Ok(());
        }
        let run = self.state.store.get_run(run_id).await?;
        let stack = self.state.store.get_stack(&run.stack_id).await?;
        if run.is_deployment_run()
            || !stack.autodeploy
            || crate::policies::plan::any_for(&self.state, &stack).await?
        {
            return Ok(());
        }
        let event = after_planning(PlanOutcome {
            run_type: run.run_type,
            no_op: false,
            autodeploy: true,
            denied: false,
            warnings: false,
            approval_policies: false,
        });
        if event != RunEvent::Autodeploy
            || advance_to(&self.state, run_id, run.state, RunState::Planning).await
                != RunState::Planning
        {
            return Ok(());
        }
        let note = "the saved plan has changes: applying while its details are read";
        match self
            .state
            .transition(run_id, event, note, RunPatch::default())
            .await
        {
            Ok(_) => {
                self.decide(lease_id, run_id, kind, Decision::Apply("autodeploy"))
                    .await;
            }
            // Stopped meanwhile: CancelJob ends the job.
            Err(e) => tracing::info!(run.id = %run_id, error = %e, "saved plan not applied"),
        }
        Ok(())
    }

    async fn plan_result(
        &self,
        lease_id: &str,
        run_id: &str,
        kind: apb::JobKind,
        r: rpb::PlanResult,
    ) -> Result<()> {
        let run = self.state.store.get_run(run_id).await?;
        // Applied on the saved plan alone (see `plan_saved`): the result brings its details.
        let applying = kind == apb::JobKind::PlanAndApply
            && matches!(run.state, RunState::PreparingApply | RunState::Applying);
        if !applying {
            advance_to(&self.state, run_id, run.state, RunState::Planning).await;
        }
        if !r.success {
            // An applying run's agent stops the apply.
            fail_run(
                &self.state,
                run_id,
                &format!("planning failed: {}", r.error),
            )
            .await;
            return self.end_lease(lease_id).await;
        }
        let changes = match plan_changes(r.changes) {
            Ok(c) => c,
            Err(e) => {
                fail_run(&self.state, run_id, &format!("bad plan result: {e}")).await;
                self.decide(lease_id, run_id, kind, Decision::Drop("bad plan result"))
                    .await;
                return self.end_lease(lease_id).await;
            }
        };
        let delta = r
            .delta
            .map(convert::delta_from)
            .unwrap_or_else(|| Delta::from_changes(&changes));
        if applying {
            let patch = RunPatch {
                delta: Some(delta),
                changes: Some(changes),
                no_op: Some(r.no_op),
                plan_json: Some(r.plan_json),
                ..Default::default()
            };
            self.state
                .mutate_run(run_id, |run, now| {
                    run.apply_patch(patch.clone(), now);
                    Ok(())
                })
                .await?;
            return Ok(());
        }
        // Autodeploy counts as it is now, not as it was when the run was leased: turning it
        // off while a run plans makes that run wait for confirmation.
        let autodeploy = kind == apb::JobKind::PlanAndApply
            && self
                .state
                .store
                .get_stack(&run.stack_id)
                .await
                .is_ok_and(|s| s.autodeploy);
        if let Some(why) = crate::deployments::cycle_cap(&self.state, &run, r.no_op) {
            let patch = RunPatch {
                delta: Some(delta),
                changes: Some(changes),
                no_op: Some(false),
                error: Some(why.clone()),
                ..Default::default()
            };
            if let Ok(run) = self
                .state
                .transition(run_id, RunEvent::Fail, &why, patch)
                .await
            {
                self.state
                    .system_log(run_id, format!("run failed: {why}"))
                    .await;
                self.state
                    .artifacts
                    .delete_run(run_id, &run.artifact_id)
                    .await;
            }
            return self.end_lease(lease_id).await;
        }
        let verdict = match crate::policies::plan::after_plan(
            &self.state,
            &run,
            &changes,
            &delta,
            r.no_op,
            &r.plan_json,
        )
        .await
        {
            Ok(v) => v,
            Err(e) => {
                // Without the plan policies' verdict the plan cannot be let through.
                fail_run(
                    &self.state,
                    run_id,
                    &format!("plan policies could not be evaluated: {e}"),
                )
                .await;
                self.decide(
                    lease_id,
                    run_id,
                    kind,
                    Decision::Drop("plan policies failed"),
                )
                .await;
                return self.end_lease(lease_id).await;
            }
        };
        let event = after_planning(PlanOutcome {
            run_type: run.run_type,
            no_op: r.no_op,
            autodeploy,
            denied: !verdict.denies.is_empty(),
            warnings: !verdict.warnings.is_empty(),
            approval_policies: verdict.approval_policies,
        });
        let patch = RunPatch {
            delta: Some(delta),
            changes: Some(changes),
            no_op: Some(r.no_op),
            plan_json: Some(r.plan_json),
            policy_denies: Some(verdict.denies.clone()),
            policy_warnings: Some(verdict.warnings.clone()),
            flags: Some(verdict.flags.clone()),
            error: verdict.error(),
            ..Default::default()
        };
        if kind == apb::JobKind::PlanAndApply
            && matches!(
                event,
                RunEvent::RequireConfirmation | RunEvent::RequireReview
            )
        {
            // The run will wait for a human: the agent uploads the workspace first and the run
            // moves on when `workspace_stored` arrives (see `Slot::deferred`).
            let why = if event == RunEvent::RequireReview {
                "the plan needs review"
            } else {
                "the plan needs confirmation"
            };
            self.with_slot(lease_id, |s| {
                s.deferred = Some((event, patch));
                s.needs_upload = true;
            });
            self.decide(lease_id, run_id, kind, Decision::Keep(why))
                .await;
            return Ok(());
        }
        // The skip shows in the run's history, next to the state it led to.
        let note = if r.skipped {
            "planning skipped (CAIRN_SKIP_PLANNING)"
        } else {
            ""
        };
        let run = match self.state.transition(run_id, event, note, patch).await {
            Ok(run) => run,
            Err(e) => {
                // Stopped or failed meanwhile: the plan is of no use any more.
                tracing::info!(run.id = %run_id, error = %e, "plan result not applied");
                let now = self.state.store.get_run(run_id).await?.state;
                let why = format!("the run is {now}");
                self.decide(lease_id, run_id, kind, Decision::Drop(&why))
                    .await;
                return self.end_lease(lease_id).await;
            }
        };
        if run.state.is_terminal() {
            let why = match event {
                RunEvent::FinishNoOp => "no changes".to_string(),
                _ => format!("the run is {}", run.state),
            };
            self.decide(lease_id, run_id, kind, Decision::Drop(&why))
                .await;
            self.state
                .artifacts
                .delete_run(run_id, &run.artifact_id)
                .await;
            return self.end_lease(lease_id).await;
        }
        if kind == apb::JobKind::PlanAndApply {
            if run.state == RunState::PreparingApply {
                self.decide(lease_id, run_id, kind, Decision::Apply("autodeploy"))
                    .await;
                return Ok(());
            }
            let why = format!("the run is {}", run.state);
            self.decide(lease_id, run_id, kind, Decision::Drop(&why))
                .await;
            return self.end_lease(lease_id).await;
        }
        // The agent stores the workspace before it reports the plan: an auto-approved
        // deployment run can be confirmed now.
        crate::deployments::workspace_stored(&self.state, run_id).await;
        let waiting_upload = {
            let map = self.state.agents.lock();
            map.get(&self.worker_id)
                .and_then(|c| c.slots.get(lease_id))
                .is_some_and(|s| s.needs_upload && !s.uploaded)
        };
        if !drives(kind, run.state) && !waiting_upload {
            self.end_lease(lease_id).await?;
        }
        Ok(())
    }

    /// Sends the post-plan decision of a PLAN_AND_APPLY lease (nothing for other kinds) and
    /// keeps it to send again should the lease be re-adopted.
    async fn decide(&self, lease_id: &str, run_id: &str, kind: apb::JobKind, d: Decision<'_>) {
        if kind != apb::JobKind::PlanAndApply {
            return;
        }
        let proceed = d.message(lease_id, run_id);
        tracing::info!(run.id = %run_id, lease.id = %lease_id, apply = proceed.apply, upload = proceed.upload_workspace, reason = %proceed.reason, "decision after planning");
        self.with_slot(lease_id, |s| s.decision = Some(proceed.clone()));
        self.send(proceed_msg(proceed)).await;
    }

    /// Re-adopts leases of jobs this agent still runs from an earlier session: the lease must
    /// belong to a worker of the same pool and name and must not have expired. With `from_live`
    /// (a heartbeat: the agent states what runs on this session) a lease is also taken from
    /// another open session of that worker, one the server has not yet seen break.
    async fn adopt(&self, lease_ids: &[String], from_live: bool) -> Result<()> {
        let timeout = i64::try_from(self.state.config.lease_timeout.as_nanos()).unwrap_or(i64::MAX);
        for lease_id in lease_ids {
            if self.slot(lease_id).is_some() {
                continue;
            }
            let lease = match self.state.store.get_lease(lease_id).await {
                Ok(l) => l,
                Err(cairn_store::StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            if lease.worker_id == self.worker_id
                || lease.is_expired(cairn_core::now_nanos(), timeout)
            {
                continue;
            }
            let live_holder = self.state.agents.lock().contains_key(&lease.worker_id);
            if live_holder && !from_live {
                continue;
            }
            if !self.state.agents.take_over(&self.worker_id, lease_id) {
                // Nothing in memory (the server restarted): trust the store's record of the
                // lease's worker, and rebuild what the slot needs.
                if live_holder {
                    continue;
                }
                let same_worker = self
                    .state
                    .store
                    .list_workers(&self.pool_id)
                    .await?
                    .iter()
                    .any(|w| w.id == lease.worker_id && w.name == self.name);
                if !same_worker {
                    continue;
                }
                let slot = rebuild_slot(&self.state, &lease).await?;
                if !self
                    .state
                    .agents
                    .insert_slot(&self.worker_id, lease_id, slot)
                {
                    continue;
                }
            }
            // Heartbeats refresh leases by worker: point the stored lease at this session.
            match self.state.store.delete_lease(lease_id).await {
                Ok(()) => {}
                Err(cairn_store::StoreError::NotFound { .. }) => {
                    // Expired meanwhile; its run has failed.
                    self.state.agents.release(&self.worker_id, lease_id);
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            let now = cairn_core::now_nanos();
            self.state
                .store
                .create_lease(cairn_core::Lease {
                    worker_id: self.worker_id.clone(),
                    heartbeat_at: now,
                    ..lease.clone()
                })
                .await?;
            tracing::info!(run.id = %lease.run_id, lease.id = %lease_id, worker.id = %self.worker_id, "lease re-adopted after a reconnect");
            self.state
                .system_log(
                    &lease.run_id,
                    format!("worker {} reconnected and goes on with the job", self.name),
                )
                .await;
            self.resume(lease_id).await?;
        }
        Ok(())
    }

    /// After a re-adoption: stop a job whose run ended while the agent was away, otherwise
    /// send again the decision it may be waiting for.
    async fn resume(&self, lease_id: &str) -> Result<()> {
        let (run_id, kind, waiting_upload, decision) = {
            let map = self.state.agents.lock();
            let Some(s) = map.get(&self.worker_id).and_then(|c| c.slots.get(lease_id)) else {
                return Ok(());
            };
            (
                s.run_id.clone(),
                s.kind,
                s.deferred.is_some() || (s.needs_upload && !s.uploaded),
                s.decision.clone(),
            )
        };
        let run = self.state.store.get_run(&run_id).await?;
        if run.state.is_terminal() || !(drives(kind, run.state) || waiting_upload) {
            // The job's `stopped` (or late result) ends the lease.
            self.send(cancel_msg(
                lease_id,
                &run_id,
                &format!("the run is {}", run.state),
            ))
            .await;
            return Ok(());
        }
        let decision = decision.or_else(|| {
            // Rebuilt after a restart: an autodeploy run already past its plan was told to apply.
            (kind == apb::JobKind::PlanAndApply
                && matches!(run.state, RunState::PreparingApply | RunState::Applying))
            .then(|| Decision::Apply("autodeploy").message(lease_id, &run_id))
        });
        if let Some(d) = decision {
            self.with_slot(lease_id, |s| s.decision = Some(d.clone()));
            self.send(proceed_msg(d)).await;
        }
        Ok(())
    }

    async fn apply_result(&self, lease_id: &str, run_id: &str, r: rpb::ApplyResult) -> Result<()> {
        let run = self.state.store.get_run(run_id).await?;
        // The applied workspace and its data key go before the run moves on: a deployment
        // run's next cycle may be leased the moment it is REPLAN_REQUESTED, and that lease
        // stores a new data key under the same run id. Deleted after the transition, the new
        // key went too and the cycle's apply could never be leased ("no workspace key").
        self.state
            .artifacts
            .delete_run(run_id, &run.artifact_id)
            .await;
        if r.success {
            let note = if r.skipped {
                "applying skipped (CAIRN_SKIP_APPLYING)"
            } else {
                ""
            };
            // A deployment run plans again after each apply; an empty plan finishes it. A
            // destroy has nothing to converge to (and Terraform keeps planning the removal of
            // outputs that are gone): its apply ends it.
            let event = if run.is_deployment_run() && run.mode != RunMode::Destroy {
                RunEvent::Cycle
            } else {
                RunEvent::FinishApply
            };
            let res = self
                .state
                .transition(run_id, event, note, RunPatch::default())
                .await;
            if let Err(e) = res {
                tracing::info!(run.id = %run_id, error = %e, "apply result not applied");
            }
        } else {
            fail_run(
                &self.state,
                run_id,
                &format!("applying failed: {}", r.error),
            )
            .await;
        }
        self.end_lease(lease_id).await
    }

    async fn end_lease(&self, lease_id: &str) -> Result<()> {
        end_lease(&self.state, &self.worker_id, lease_id).await
    }
}

/// Whether a lease of `kind` still has work while its run is in `state`.
fn drives(kind: apb::JobKind, state: RunState) -> bool {
    use RunState::*;
    match kind {
        apb::JobKind::Apply => matches!(state, PreparingApply | Applying),
        apb::JobKind::PlanAndApply => matches!(
            state,
            Preparing | Initializing | Planning | PreparingApply | Applying
        ),
        _ => matches!(state, Preparing | Initializing | Planning),
    }
}

/// A plan result's changes, each checked.
fn plan_changes(changes: Vec<cairn_proto::v1::Change>) -> Result<Vec<Change>> {
    changes
        .into_iter()
        .enumerate()
        .map(|(i, c)| convert::change_from(&format!("plan_result.changes[{i}]"), c))
        .collect()
}

/// Moves a run forward through the phases up to `target`, filling in phases an agent skipped.
/// Stops quietly where the table refuses (e.g. the run was stopped meanwhile).
async fn advance_to(
    state: &AppState,
    run_id: &str,
    mut cur: RunState,
    target: RunState,
) -> RunState {
    use RunState::*;
    while cur != target {
        let event = match (cur, target) {
            (Preparing, Initializing | Planning) => RunEvent::Initialize,
            (Initializing, Planning) => RunEvent::Plan,
            (PreparingApply, Applying) => RunEvent::Apply,
            _ => break,
        };
        match state
            .transition(run_id, event, "", RunPatch::default())
            .await
        {
            Ok(run) => cur = run.state,
            Err(_) => break,
        }
    }
    cur
}

fn phase_span(
    state: &AppState,
    run_id: &str,
    stack_id: &str,
    run_state: RunState,
    phase: Phase,
) -> tracing::Span {
    let span = tracing::info_span!(
        "run.phase",
        run.phase = convert::phase(phase).as_str_name(),
        run.id = %run_id,
        stack.id = %stack_id,
        run.state = %run_state,
    );
    if let Some(tp) = state.traceparent(run_id) {
        let _ = cairn_telemetry::propagation::set_parent_from_traceparent(&span, &tp);
    }
    span
}

/// Replaces every secret value in `text` by `***`.
pub fn mask(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

/// Fails a run if the table allows it from its current state; records the reason.
pub async fn fail_run(state: &AppState, run_id: &str, reason: &str) {
    let patch = RunPatch {
        error: Some(reason.to_string()),
        ..Default::default()
    };
    match state
        .transition(run_id, RunEvent::Fail, reason, patch)
        .await
    {
        Ok(run) => {
            state
                .system_log(run_id, format!("run failed: {reason}"))
                .await;
            state.artifacts.delete_run(run_id, &run.artifact_id).await;
        }
        Err(e) => tracing::debug!(run.id = %run_id, error = %e, "run not failed"),
    }
}

pub async fn end_lease(state: &AppState, worker_id: &str, lease_id: &str) -> Result<()> {
    state.agents.release(worker_id, lease_id);
    let run_id = state.store.get_lease(lease_id).await.ok().map(|l| l.run_id);
    match state.store.delete_lease(lease_id).await {
        Ok(()) | Err(cairn_store::StoreError::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    if let Some(run_id) = run_id {
        crate::state_backend::release_run_locks(state, &run_id).await;
    }
    state.wake_scheduler();
    Ok(())
}

/// The scheduler: one task, woken by new work and on a tick.
pub async fn scheduler(state: Arc<AppState>) {
    let tick =
        (state.config.lease_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        if let Err(e) = expire_leases(&state).await {
            tracing::warn!(error = %e, "lease expiry failed");
        }
        if let Err(e) = dispatch(&state).await {
            tracing::warn!(error = %e, "dispatch failed");
        }
        tokio::select! {
            _ = state.wake.notified() => {}
            _ = tokio::time::sleep(tick) => {}
            _ = state.shutdown.cancelled() => return,
        }
    }
}

async fn expire_leases(state: &AppState) -> Result<()> {
    let timeout = i64::try_from(state.config.lease_timeout.as_nanos()).unwrap_or(i64::MAX);
    let now = cairn_core::now_nanos();
    for lease in state.store.list_leases().await? {
        if !lease.is_expired(now, timeout) {
            continue;
        }
        tracing::warn!(run.id = %lease.run_id, lease.id = %lease.id, worker.id = %lease.worker_id, "lease expired");
        if let Some(tx) = state.agents.release(&lease.worker_id, &lease.id) {
            let _ = tx.try_send(Ok(cancel_msg(&lease.id, &lease.run_id, "lease expired")));
        }
        match state.store.delete_lease(&lease.id).await {
            Ok(()) | Err(cairn_store::StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        fail_run(state, &lease.run_id, "worker lost: lease expired").await;
        crate::state_backend::release_run_locks(state, &lease.run_id).await;
    }
    Ok(())
}

async fn dispatch(state: &AppState) -> Result<()> {
    let view = state.store.dispatch_view().await?;
    // Tracked runs of deployment stacks become deployment runs first (even with no agent, so
    // that the runs are there to see); the queue is read again on the next round.
    if crate::deployments::adopt_tracked_runs(state, &view.runs).await? {
        state.wake_scheduler();
        return Ok(());
    }
    if state.agents.is_empty() {
        return Ok(());
    }
    let order = dispatch_order(view);
    let policies = state.store.all_policies().await?;
    let mut stacks: HashMap<String, Option<Stack>> = HashMap::new();
    for run in order {
        if !stacks.contains_key(&run.stack_id) {
            let s = match state.store.get_stack(&run.stack_id).await {
                Ok(s) => Some(s),
                Err(cairn_store::StoreError::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            };
            stacks.insert(run.stack_id.clone(), s);
        }
        let Some(Some(stack)) = stacks.get(&run.stack_id) else {
            continue;
        };
        if !crate::policies::approval::may_dispatch(state, &policies, &run, stack).await? {
            continue;
        }
        if !crate::deployments::may_dispatch(state, &run).await {
            continue;
        }
        let (event, kind) = match run.state {
            RunState::Queued | RunState::ReplanRequested => {
                // Deployment runs apply in leases of their own, once they hold the lock.
                let autodeploy = stack.autodeploy
                    && run.run_type == RunType::Tracked
                    && !run.is_deployment_run();
                let kind = if autodeploy {
                    apb::JobKind::PlanAndApply
                } else {
                    apb::JobKind::Plan
                };
                (RunEvent::Dispatch, kind)
            }
            RunState::Confirmed => (RunEvent::PickUpApply, apb::JobKind::Apply),
            _ => continue,
        };
        let Some(worker_id) = state
            .agents
            .pick(convert::effective_pool(stack), &stack.vendor)
        else {
            continue;
        };
        if let Err(e) = lease_run(state, &worker_id, &run, stack, event, kind).await {
            tracing::warn!(run.id = %run.id, error = %e, "leasing failed");
        }
    }
    Ok(())
}

async fn lease_run(
    state: &AppState,
    worker_id: &str,
    run: &Run,
    stack: &Stack,
    event: RunEvent,
    kind: apb::JobKind,
) -> Result<()> {
    let env = state.store.list_env_vars(&stack.id).await?;
    // The lease id first: the state password is bound to it.
    let lease_id = cairn_core::ids::new_id("lease");
    let env = crate::state_backend::with_lease_env(state, run, stack, &lease_id, env)?;
    let env = crate::deployments::lease_env(state, run, kind == apb::JobKind::Apply, env).await?;
    let mut variables = crate::deployments::lease_variables(state, run).await?;
    // Upstream outputs are read when the run plans; an apply uses the saved plan's values.
    let upstream = if kind == apb::JobKind::Apply {
        Ok(Default::default())
    } else {
        crate::upstream::resolve_inputs(state, run).await?
    };
    let upstream: crate::upstream::Resolved = match upstream {
        Ok(resolved) => resolved,
        Err(reason) => {
            crate::upstream::fail_unresolved(state, run, event, &reason).await;
            return Ok(());
        }
    };
    variables.extend(upstream.variables);
    let workspace_key = match kind {
        apb::JobKind::Apply => match state.artifacts.data_key(&state.master_key, &run.id).await? {
            Some(key) => key,
            None => {
                // Without its key the plan's workspace can never be opened: retrying on every
                // scheduling round would leave the run CONFIRMED for good, and silently.
                fail_run(
                    state,
                    &run.id,
                    "the plan's workspace key is gone, so its workspace cannot be applied; \
                     trigger the run again",
                )
                .await;
                return Ok(());
            }
        },
        _ => {
            state
                .artifacts
                .new_data_key(&state.master_key, &run.id)
                .await?
        }
    };
    let source_artifact_id = if kind == apb::JobKind::Apply {
        String::new()
    } else {
        crate::deployments::lease_source(state, run, &workspace_key).await?
    };
    // A PLAN_AND_APPLY lease (tracked runs only) uploads only when ProceedJob asks for it.
    let upload = kind != apb::JobKind::Apply && run.run_type != RunType::Proposed;
    let secrets: Vec<String> = env
        .iter()
        .filter(|v| v.secret && !v.value.is_empty())
        .map(|v| v.value.clone())
        .chain(upstream.secrets)
        .collect();
    let (tx, agent_name) = {
        let mut map = state.agents.lock();
        let Some(conn) = map.get_mut(worker_id) else {
            return Ok(());
        };
        conn.slots.insert(
            lease_id.clone(),
            Slot {
                run_id: run.id.clone(),
                stack_id: stack.id.clone(),
                kind,
                secrets,
                needs_upload: upload && kind == apb::JobKind::Plan,
                uploaded: false,
                phase_span: None,
                decision: None,
                deferred: None,
            },
        );
        (conn.tx.clone(), conn.name.clone())
    };
    let run = match state
        .transition(&run.id, event, "", RunPatch::default())
        .await
    {
        Ok(r) => r,
        Err(e) => {
            state.agents.release(worker_id, &lease_id);
            return Err(e);
        }
    };
    let now = cairn_core::now_nanos();
    let created = state
        .store
        .create_lease(cairn_core::Lease {
            id: lease_id.clone(),
            run_id: run.id.clone(),
            stack_id: stack.id.clone(),
            worker_id: worker_id.to_string(),
            kind: if kind == apb::JobKind::Apply {
                LeaseKind::Apply
            } else {
                LeaseKind::Plan
            },
            created_at: now,
            heartbeat_at: now,
        })
        .await;
    if let Err(e) = created {
        state.agents.release(worker_id, &lease_id);
        fail_run(state, &run.id, "could not record the lease").await;
        return Err(e.into());
    }
    let phase = if kind == apb::JobKind::Apply {
        Phase::Applying
    } else {
        Phase::Preparing
    };
    let span = phase_span(state, &run.id, &stack.id, run.state, phase);
    let traceparent = cairn_telemetry::propagation::traceparent_of(&span).unwrap_or_default();
    {
        let mut map = state.agents.lock();
        if let Some(s) = map
            .get_mut(worker_id)
            .and_then(|c| c.slots.get_mut(&lease_id))
        {
            s.phase_span = Some(span);
        }
    }
    let skip = cairn_core::skip_flags(&env);
    let lease = apb::Lease {
        lease_id: lease_id.clone(),
        run_id: run.id.clone(),
        stack_id: stack.id.clone(),
        kind: kind as i32,
        repository: stack.repository.clone(),
        commit_sha: run.commit.hash.clone(),
        branch: if run.commit.branch.is_empty() {
            stack.branch.clone()
        } else {
            run.commit.branch.clone()
        },
        project_root: stack.project_root.clone(),
        vendor: stack.vendor.clone(),
        env: env
            .iter()
            .map(|v| (v.name.clone(), v.value.clone()))
            .collect(),
        secret_names: env
            .iter()
            .filter(|v| v.secret)
            .map(|v| v.name.clone())
            .collect(),
        targets: run.targets.clone(),
        destroy: run.mode == RunMode::Destroy,
        skip_planning: skip.planning,
        skip_applying: skip.applying,
        traceparent,
        workspace_key,
        artifact_id: if kind == apb::JobKind::Apply {
            run.artifact_id.clone()
        } else {
            String::new()
        },
        upload_workspace: upload,
        variables,
        run_type: convert::run_type(run.run_type) as i32,
        source_artifact_id,
    };
    let msg = apb::SessionResponse {
        message: Some(apb::session_response::Message::Lease(lease)),
    };
    if tx.send(Ok(msg)).await.is_err() {
        end_lease(state, worker_id, &lease_id).await?;
        fail_run(state, &run.id, "worker lost: session closed").await;
        return Ok(());
    }
    tracing::info!(run.id = %run.id, lease.id = %lease_id, worker.id = %worker_id, kind = kind.as_str_name(), "run leased");
    state
        .system_log(
            &run.id,
            format!("leased to worker {agent_name} ({})", kind.as_str_name()),
        )
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked() {
        let s = vec!["hunter2".to_string(), String::new()];
        assert_eq!(mask("pw=hunter2 and hunter2", &s), "pw=*** and ***");
        assert_eq!(mask("nothing here", &s), "nothing here");
    }

    #[test]
    fn leases_drive_their_states() {
        assert!(drives(apb::JobKind::Plan, RunState::Planning));
        assert!(!drives(apb::JobKind::Plan, RunState::Unconfirmed));
        assert!(drives(apb::JobKind::PlanAndApply, RunState::Applying));
        assert!(!drives(apb::JobKind::Apply, RunState::Planning));
    }
}
