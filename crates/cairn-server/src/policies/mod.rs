//! Policy orchestration: which policies apply to a stack, evaluating them off the async
//! runtime, recording samples, and what each kind of decision does to runs.
//!
//! - Attachment: a policy applies to a stack it is attached to directly, to every stack carrying
//!   label `<l>` when the policy has label `autoattach:<l>`, and to all stacks with
//!   `autoattach:*`.
//! - Every evaluation stores a sample (input, decision, duration, policy version, error); the
//!   newest [`Config::policy_samples_kept`](crate::Config) per policy are retained.
//! - A policy that fails to evaluate (run-time error, time budget) counts for nothing in push and
//!   trigger rounds, denies in plan rounds and rejects in approval rounds: failures never let a
//!   change through.
//! - Flags (`flag` rules of any kind) are added to the run the policy was evaluated for and show
//!   up as `run.flags` in later evaluations.
//!
//! Kinds live in submodules: [`plan`], [`approval`], [`trigger`], [`push`].

pub mod approval;
pub mod plan;
pub mod push;
mod push_fanout;
pub mod trigger;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use cairn_core::{Run, RunState, Stack};
use cairn_policy::input::{
    Commit as PCommit, CreatorSession as PSession, RunChange, RunInfo, StackInfo, StateTransition,
    WorkerPoolInfo,
};
use cairn_policy::{CompiledPolicy, Decision, PolicyCache, PolicyError, PolicyKind};
use cairn_store::{PolicyRecord, PolicySample};
use serde_json::Value as Json;
use tokio::sync::mpsc;

use crate::error::{Result, ServerError};
use crate::state::AppState;

/// Label prefix that attaches a policy to stacks by label.
pub const AUTOATTACH: &str = "autoattach:";

/// Work for the policy task, in the order runs changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    /// A blocking run reached a terminal state: evaluate trigger policies.
    Finished(String),
    /// A run entered UNCONFIRMED or PENDING_REVIEW: evaluate approval policies.
    Review(String),
}

/// The policy half of the shared state: compiled policies and the policy task's queue.
pub struct Policies {
    pub cache: PolicyCache,
    trigger_tx: mpsc::UnboundedSender<Job>,
    trigger_rx: Mutex<Option<mpsc::UnboundedReceiver<Job>>>,
}

impl Default for Policies {
    fn default() -> Self {
        let (trigger_tx, trigger_rx) = mpsc::unbounded_channel();
        Policies {
            cache: PolicyCache::default(),
            trigger_tx,
            trigger_rx: Mutex::new(Some(trigger_rx)),
        }
    }
}

impl Policies {
    /// Called for every transition: queues the policy work the new state calls for. The
    /// policy task does it, so that policies never run inside a transition (approval policies
    /// transition runs themselves).
    pub fn run_changed(&self, run: &Run) {
        let job = if run.state.is_terminal() && run.run_type.is_blocking() {
            Job::Finished(run.id.clone())
        } else if matches!(run.state, RunState::Unconfirmed | RunState::PendingReview) {
            Job::Review(run.id.clone())
        } else {
            return;
        };
        let _ = self.trigger_tx.send(job);
    }

    /// The receiving end of the queue; the first caller (the server) gets it.
    pub(crate) fn take_trigger_queue(&self) -> Option<mpsc::UnboundedReceiver<Job>> {
        self.trigger_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// Whether `policy` applies to `stack` (direct attachment or an `autoattach:` label).
pub fn applies_to(policy: &PolicyRecord, stack: &Stack) -> bool {
    policy.stack_ids.contains(&stack.id)
        || policy
            .labels
            .iter()
            .any(|l| match l.strip_prefix(AUTOATTACH) {
                Some("*") => true,
                Some(wanted) => stack.labels.iter().any(|sl| sl == wanted),
                None => false,
            })
}

pub fn kind_of(policy: &PolicyRecord) -> Result<PolicyKind> {
    policy
        .kind
        .parse()
        .map_err(|e: String| ServerError::Internal(format!("policy {}: {e}", policy.id)))
}

/// A policy ready to evaluate.
#[derive(Clone)]
pub struct Active {
    pub record: PolicyRecord,
    pub compiled: Arc<CompiledPolicy>,
}

/// The policies of `kind` that apply to `stack`, among `all` (ordered by id), compiled.
pub fn select(
    state: &AppState,
    all: &[PolicyRecord],
    kind: PolicyKind,
    stack: &Stack,
) -> Vec<Active> {
    all.iter()
        .filter(|p| p.kind == kind.as_str() && applies_to(p, stack))
        .filter_map(|p| {
            match state.policies.cache.get_or_compile(
                &p.id,
                p.version.max(0) as u64,
                kind,
                &p.body,
            ) {
                Ok(compiled) => Some(Active {
                    record: p.clone(),
                    compiled,
                }),
                Err(e) => {
                    // Bodies are compiled when saved, so this only happens when the policy
                    // engine changed underneath a stored policy.
                    tracing::error!(policy.id = %p.id, error = %e, "stored policy does not compile");
                    None
                }
            }
        })
        .collect()
}

/// The policies of `kind` that apply to `stack`.
pub async fn attached(state: &AppState, kind: PolicyKind, stack: &Stack) -> Result<Vec<Active>> {
    let all = state.store.all_policies().await?;
    Ok(select(state, &all, kind, stack))
}

/// The outcome of one evaluation.
pub struct Evaluated {
    pub decision: std::result::Result<Decision, PolicyError>,
    pub input_json: Json,
    pub micros: i64,
}

/// Evaluates a compiled policy on the blocking pool (regorus evaluation is CPU work bounded by
/// the policy time budget, not async).
pub async fn evaluate(
    compiled: Arc<CompiledPolicy>,
    input: regorus::Value,
    input_json: Json,
) -> Evaluated {
    tokio::task::spawn_blocking(move || evaluate_blocking(&compiled, input, input_json))
        .await
        .unwrap_or_else(|e| Evaluated {
            decision: Err(PolicyError::Evaluation(format!("evaluator panicked: {e}"))),
            input_json: Json::Null,
            micros: 0,
        })
}

/// [`evaluate`] on the calling thread, for callers already off the async runtime (the push
/// fan-out evaluates thousands of stacks on a few blocking threads).
pub fn evaluate_blocking(
    compiled: &CompiledPolicy,
    input: regorus::Value,
    input_json: Json,
) -> Evaluated {
    let started = Instant::now();
    let decision = compiled
        .evaluate_value(input)
        .and_then(|e| e.decision(compiled.kind()));
    Evaluated {
        decision,
        input_json,
        micros: i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX),
    }
}

/// The JSON stored as a sample's decision: the decision itself plus what the server made of it
/// (`notes`: skipped stacks, caps, ...).
pub fn decision_json(decision: &Decision, notes: &[String]) -> Json {
    let mut v = serde_json::to_value(decision).unwrap_or(Json::Null);
    if let (Json::Object(map), false) = (&mut v, notes.is_empty()) {
        map.insert("notes".into(), Json::from(notes.to_vec()));
    }
    v
}

/// Stores a sample of an evaluation. Failing to store one is logged, never fatal: the decision
/// has been taken either way.
pub async fn record_sample(
    state: &AppState,
    policy: &PolicyRecord,
    run_id: &str,
    ev: &Evaluated,
    notes: &[String],
) {
    let (decision_json, error) = match &ev.decision {
        Ok(d) => (self::decision_json(d, notes).to_string(), String::new()),
        Err(e) => (
            if notes.is_empty() {
                String::new()
            } else {
                serde_json::json!({ "notes": notes }).to_string()
            },
            e.to_string(),
        ),
    };
    let sample = PolicySample {
        id: cairn_core::ids::new_id("smp"),
        policy_id: policy.id.clone(),
        policy_version: policy.version,
        run_id: run_id.to_string(),
        input_json: ev.input_json.to_string(),
        decision_json,
        duration_micros: ev.micros,
        created_at: cairn_core::now_nanos(),
        error,
    };
    if let Err(e) = state
        .store
        .add_policy_sample(sample, state.config.policy_samples_kept)
        .await
    {
        tracing::warn!(policy.id = %policy.id, error = %e, "policy sample not stored");
    }
}

/// Converts a typed input for evaluation and for the sample.
pub fn prepare_input(
    input: &dyn cairn_policy::PolicyInput,
) -> std::result::Result<(regorus::Value, Json), PolicyError> {
    Ok((input.to_rego()?, input.to_json()?))
}

/// Adds `flags` to a run (kept sorted and unique) without changing its state.
pub async fn add_flags(state: &AppState, run_id: &str, flags: &[String]) -> Result<()> {
    if flags.is_empty() {
        return Ok(());
    }
    let current = state.store.get_run(run_id).await?;
    if flags.iter().all(|f| current.flags.contains(f)) {
        return Ok(());
    }
    let flags = flags.to_vec();
    state
        .mutate_run(run_id, move |run, now| {
            let mut all: std::collections::BTreeSet<String> = run.flags.iter().cloned().collect();
            all.extend(flags.iter().cloned());
            run.apply_patch(
                cairn_core::RunPatch {
                    flags: Some(all.into_iter().collect()),
                    ..Default::default()
                },
                now,
            );
            Ok(())
        })
        .await?;
    Ok(())
}

pub fn commit_info(c: &cairn_core::Commit) -> PCommit {
    PCommit {
        author: c.author.clone(),
        branch: c.branch.clone(),
        created_at: c.created_at,
        hash: c.hash.clone(),
        message: c.message.clone(),
    }
}

/// The `run` document of policy inputs.
pub fn run_info(run: &Run, stack: &Stack) -> RunInfo {
    // VCS-triggered runs carry `git:<event>` and appear with `triggered_by: null`, as in
    // Spacelift, so the retry example's `is_null(input.run.triggered_by)` guard works.
    let triggered_by = (!run.triggered_by.is_empty() && !run.triggered_by.starts_with("git:"))
        .then(|| run.triggered_by.clone());
    let session = &run.creator_session;
    RunInfo {
        based_on_local_workspace: false,
        branch: run.commit.branch.clone(),
        changes: run
            .changes
            .iter()
            .map(|c| RunChange {
                action: enum_text(&c.action),
                entity: cairn_policy::input::ChangeEntity {
                    address: c.entity.address.clone(),
                    name: c.entity.name.clone(),
                    r#type: c.entity.r#type.clone(),
                    entity_vendor: c.entity.entity_vendor.clone(),
                    entity_type: c.entity.entity_type.clone(),
                    data: c.entity.data.clone(),
                },
                phase: enum_text(&c.phase),
            })
            .collect(),
        command: None,
        commit: commit_info(&run.commit),
        created_at: run.created_at,
        creator_session: (!session.login.is_empty()).then(|| PSession {
            admin: session.admin,
            creator_ip: session.creator_ip.clone(),
            login: session.login.clone(),
            name: session.name.clone(),
            teams: session.teams.clone(),
            machine: session.machine,
        }),
        drift_detection: run.run_type == cairn_core::RunType::DriftDetection,
        flags: run.flags.clone(),
        id: run.id.clone(),
        runtime_config: cairn_policy::input::RuntimeConfig {
            project_root: stack.project_root.clone(),
            terraform_version: stack.terraform_version.clone(),
            ..Default::default()
        },
        state: run.state.as_str().to_string(),
        states_history: run
            .states_history
            .iter()
            .map(|t| StateTransition {
                new_state: t.state.as_str().to_string(),
            })
            .collect(),
        triggered_by,
        r#type: run.run_type.as_str().to_string(),
        updated_at: run.updated_at,
        user_provided_metadata: Vec::new(),
    }
}

/// The `stack` document of policy inputs (and each element of `stacks`).
pub fn stack_info(stack: &Stack) -> StackInfo {
    StackInfo {
        additional_project_globs: stack.additional_project_globs.clone(),
        administrative: stack.administrative,
        autodeploy: stack.autodeploy,
        branch: stack.branch.clone(),
        id: stack.id.clone(),
        labels: stack.labels.clone(),
        locked_by: (!stack.locked_by.is_empty()).then(|| stack.locked_by.clone()),
        name: stack.name.clone(),
        namespace: stack.namespace.clone(),
        project_root: (!stack.project_root.is_empty()).then(|| stack.project_root.clone()),
        repository: stack.repository.clone(),
        state: stack.state.clone(),
        terraform_version: (!stack.terraform_version.is_empty())
            .then(|| stack.terraform_version.clone()),
        tracked_commit: stack.tracked_commit.as_ref().map(commit_info),
        worker_pool: WorkerPoolInfo {
            id: Some(crate::convert::effective_pool(stack).to_string()),
            ..Default::default()
        },
    }
}

/// The serde name of a unit enum variant, lowercased as policies expect (`added`, `plan`).
fn enum_text<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Json::String(s)) => s.to_ascii_lowercase(),
        _ => String::new(),
    }
}

/// Whether `state` is one in which approval policies decide.
pub fn reviewable(state: RunState) -> bool {
    matches!(
        state,
        RunState::Queued | RunState::Unconfirmed | RunState::PendingReview
    )
}

/// What a run created by a policy (or a VCS event) starts with.
pub struct NewRun {
    pub run_type: cairn_core::RunType,
    pub commit: cairn_core::Commit,
    pub triggered_by: String,
    /// Joins this workflow; `None` starts a new one (the run's own id).
    pub workflow_id: Option<String>,
    pub prioritized: bool,
    pub flags: Vec<String>,
    /// The pull request whose event creates the run.
    pub pull_request: Option<u64>,
}

/// Creates a QUEUED run on `stack`, lets approval policies look at it and wakes the scheduler.
pub async fn create_run(state: &AppState, stack: &Stack, new: NewRun) -> Result<Run> {
    let run = state.store.create_run(new_run(stack, new)).await?;
    tracing::info!(run.id = %run.id, stack.id = %run.stack_id, run.type = run.run_type.as_str(), triggered_by = %run.triggered_by, "run created by policy");
    after_run_created(state, &run).await;
    Ok(run)
}

/// [`create_run`] for runs a VCS event asks for: stored only if no run of the stack has the
/// same dedup key ([`Run::dedup_key`]: deployment, commit SHA, run type), atomically in the
/// store, so that replicas processing the same event create one run. The caller finishes a
/// created run with [`after_run_created`] (after pre-empting what it replaces).
pub async fn create_vcs_run(
    state: &AppState,
    stack: &Stack,
    new: NewRun,
) -> Result<cairn_store::Dedup> {
    let out = cairn_store::create_run_dedup(&*state.store, new_run(stack, new)).await?;
    if let cairn_store::Dedup::Created(run) = &out {
        tracing::info!(run.id = %run.id, stack.id = %run.stack_id, run.type = run.run_type.as_str(), triggered_by = %run.triggered_by, "run created by VCS event");
    }
    Ok(out)
}

/// The QUEUED run `new` describes, not yet stored.
pub fn new_run(stack: &Stack, new: NewRun) -> Run {
    let mut run = Run::new(
        cairn_core::ids::new_run_id(),
        stack.id.clone(),
        new.run_type,
        new.commit,
        new.triggered_by,
        cairn_core::CreatorSession::default(),
        cairn_core::now_nanos(),
    );
    if let Some(w) = new.workflow_id {
        run.workflow_id = w;
    }
    run.prioritized = new.prioritized;
    run.flags = new.flags;
    run.pull_request = new.pull_request;
    run
}

/// Every new run: approval policies decide whether a QUEUED run may start.
pub async fn after_run_created(state: &AppState, run: &Run) {
    if let Err(e) = approval::evaluate_approval(state, &run.id).await {
        tracing::warn!(run.id = %run.id, error = %e, "approval policies not evaluated");
    }
    state.wake_scheduler();
}
