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
//!   - `JOB_KIND_PLAN_AND_APPLY` for tracked runs of autodeploy stacks: one lease plans and then
//!     applies in the same workspace (no upload). After `plan_result` the server decides the path
//!     with `cairn_core::after_planning`: a no-op finishes the run and ends the lease; changes
//!     move the run to PREPARING_APPLY and the agent goes on with `PHASE_APPLYING` and
//!     `apply_result`. Should planning end anywhere else (e.g. a plan policy requires
//!     confirmation), the server sends `CancelJob` and the run waits like any unconfirmed run.
//!   - `JOB_KIND_APPLY` for CONFIRMED runs (→ PREPARING_APPLY), with the `artifact_id` and the
//!     run's data key (`workspace_key`) to restore the workspace with DownloadWorkspace.
//! - Job events: phases move the run (INITIALIZING → Initialize, PLANNING → Plan, APPLYING →
//!   Apply; skipped ones are filled in); log lines are masked, numbered, stored and broadcast;
//!   `failed` fails the run with its reason; `stopped` just ends the lease (StopRun already
//!   moved the run to STOPPED and sent `CancelJob`).
//! - Heartbeats list the leases still held and refresh them. A lease whose last heartbeat is
//!   older than `lease_timeout` expires: its run fails with "worker lost: lease expired" and
//!   the stack takes its next run. A closed session leaves its leases to expire the same way.

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

    fn release(&self, worker_id: &str, lease_id: &str) -> Option<Outbound> {
        let mut map = self.lock();
        let conn = map.get_mut(worker_id)?;
        conn.slots.remove(lease_id);
        Some(conn.tx.clone())
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
        // Dropping the registry entry drops the last sender: the outbound stream ends.
        self.state.agents.lock().remove(&self.worker_id);
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
            Some(E::PlanResult(r)) => self.plan_result(&ev.lease_id, &run_id, kind, r).await,
            Some(E::ApplyResult(r)) => self.apply_result(&ev.lease_id, &run_id, r).await,
            Some(E::Failed(f)) => {
                let reason = mask(&f.reason, &secrets);
                fail_run(&self.state, &run_id, &reason).await;
                self.end_lease(&ev.lease_id).await
            }
            Some(E::Stopped(_)) => self.end_lease(&ev.lease_id).await,
            Some(E::WorkspaceStored(_)) => {
                self.with_slot(&ev.lease_id, |s| s.uploaded = true);
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

    async fn plan_result(
        &self,
        lease_id: &str,
        run_id: &str,
        kind: apb::JobKind,
        r: rpb::PlanResult,
    ) -> Result<()> {
        let run = self.state.store.get_run(run_id).await?;
        advance_to(&self.state, run_id, run.state, RunState::Planning).await;
        if !r.success {
            fail_run(
                &self.state,
                run_id,
                &format!("planning failed: {}", r.error),
            )
            .await;
            return self.end_lease(lease_id).await;
        }
        let changes: std::result::Result<Vec<Change>, ServerError> = r
            .changes
            .into_iter()
            .enumerate()
            .map(|(i, c)| convert::change_from(&format!("plan_result.changes[{i}]"), c))
            .collect();
        let changes = match changes {
            Ok(c) => c,
            Err(e) => {
                fail_run(&self.state, run_id, &format!("bad plan result: {e}")).await;
                return self.end_lease(lease_id).await;
            }
        };
        let delta = r
            .delta
            .map(convert::delta_from)
            .unwrap_or_else(|| Delta::from_changes(&changes));
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
                return self.end_lease(lease_id).await;
            }
        };
        let event = after_planning(PlanOutcome {
            run_type: run.run_type,
            no_op: r.no_op,
            autodeploy: kind == apb::JobKind::PlanAndApply,
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
        let run = match self.state.transition(run_id, event, "", patch).await {
            Ok(run) => run,
            Err(e) => {
                // Stopped or failed meanwhile: the plan is of no use any more.
                tracing::info!(run.id = %run_id, error = %e, "plan result not applied");
                return self.end_lease(lease_id).await;
            }
        };
        if run.state.is_terminal() {
            self.state
                .artifacts
                .delete_run(run_id, &run.artifact_id)
                .await;
            return self.end_lease(lease_id).await;
        }
        if kind == apb::JobKind::PlanAndApply && run.state != RunState::PreparingApply {
            self.send(cancel_msg(lease_id, run_id, "the plan needs confirmation"))
                .await;
            return self.end_lease(lease_id).await;
        }
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

    async fn apply_result(&self, lease_id: &str, run_id: &str, r: rpb::ApplyResult) -> Result<()> {
        let run = self.state.store.get_run(run_id).await?;
        if r.success {
            let res = self
                .state
                .transition(run_id, RunEvent::FinishApply, "", RunPatch::default())
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
        self.state
            .artifacts
            .delete_run(run_id, &run.artifact_id)
            .await;
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
    if state.agents.is_empty() {
        return Ok(());
    }
    let order = dispatch_order(state.store.dispatch_view().await?);
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
        let (event, kind) = match run.state {
            RunState::Queued | RunState::ReplanRequested => {
                let autodeploy = stack.autodeploy && run.run_type == RunType::Tracked;
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
    let env = crate::state_backend::with_lease_env(state, run, stack, env)?;
    let workspace_key = match kind {
        apb::JobKind::Apply => state.artifacts.data_key(&state.master_key, &run.id).await?,
        _ => {
            state
                .artifacts
                .new_data_key(&state.master_key, &run.id)
                .await?
        }
    };
    let lease_id = cairn_core::ids::new_id("lease");
    let upload = kind == apb::JobKind::Plan && run.run_type != RunType::Proposed;
    let secrets: Vec<String> = env
        .iter()
        .filter(|v| v.secret && !v.value.is_empty())
        .map(|v| v.value.clone())
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
                needs_upload: upload,
                uploaded: false,
                phase_span: None,
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
        skip_planning: false,
        skip_applying: false,
        traceparent,
        workspace_key,
        artifact_id: if kind == apb::JobKind::Apply {
            run.artifact_id.clone()
        } else {
            String::new()
        },
        upload_workspace: upload,
        variables: HashMap::new(),
        run_type: convert::run_type(run.run_type) as i32,
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
