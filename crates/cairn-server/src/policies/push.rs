//! Push policies: what a push or pull-request event does to each stack of its repository.
//!
//! [`handle_push`] is the server-side half of VCS event handling: the caller (VcsService, once
//! wired to cairn-vcs) parses and authenticates the webhook and hands over a [`PushEvent`].
//! Per stack: the push policies attached to it decide (Spacelift's default behaviour when none
//! is attached), [`cairn_policy::resolve_push`] turns the decision into an action, and this
//! module carries it out: lock/unlock (owner rules of [`cairn_core::decide_lock`]), move the
//! head commit (track), cancel in-progress runs of the new run's type, create the run
//! (prioritized and flagged as asked). A stack gets at most one run per (commit sha, run type):
//! redelivered or duplicate events create nothing.

use cairn_core::{decide_lock, decide_unlock, LockOutcome, Run, RunEvent, RunPatch, RunState};
use cairn_core::{RunType, Stack, UnlockOutcome};
use cairn_policy::input::{InProgressRun, PullRequest, PushCommit, PushInput};
use cairn_policy::{
    default_push_decision, resolve_push, Decision, PolicyKind, PushAction, PushContext,
    PushDecision, PushOutcome,
};
use cairn_store::Page;

use super::{create_run, evaluate, prepare_input, record_sample, select, stack_info, NewRun};
use crate::error::Result;
use crate::state::AppState;

/// A normalized push or pull-request event.
#[derive(Debug, Clone, Default)]
pub struct PushEvent {
    /// Matched against each stack's `repository`.
    pub repository: String,
    /// The commit runs are created at (the pushed head, or the pull request's head).
    pub commit: cairn_core::Commit,
    /// `input.push` of the push policy.
    pub push: PushCommit,
    /// `input.pull_request`; `None` for plain pushes.
    pub pull_request: Option<PullRequest>,
    /// The pull request comes from a fork.
    pub from_fork: bool,
}

/// What happened on one stack.
#[derive(Debug, Clone)]
pub struct PushResult {
    pub stack_id: String,
    pub outcome: PushOutcome,
    /// The run created, if any.
    pub run: Option<Run>,
    /// Runs canceled by the `cancel` rule.
    pub canceled: Vec<String>,
    pub notes: Vec<String>,
}

/// Applies `event` to every stack of its repository, in stack id order.
pub async fn handle_push(state: &AppState, event: &PushEvent) -> Result<Vec<PushResult>> {
    let all = state.store.all_policies().await?;
    let mut out = Vec::new();
    for stack in state.store.all_stacks().await? {
        if stack.repository != event.repository {
            continue;
        }
        out.push(handle_stack(state, &all, &stack, event).await?);
    }
    Ok(out)
}

/// [`handle_push`] for the given stacks only, whatever their `repository` (for callers that
/// match repositories and integrations themselves, e.g. the VCS webhook processor).
pub async fn handle_push_for(
    state: &AppState,
    stacks: &[Stack],
    event: &PushEvent,
) -> Result<Vec<PushResult>> {
    let all = state.store.all_policies().await?;
    let mut out = Vec::new();
    for stack in stacks {
        out.push(handle_stack(state, &all, stack, event).await?);
    }
    Ok(out)
}

fn in_progress(runs: &[Run]) -> Vec<InProgressRun> {
    runs.iter()
        .filter(|r| matches!(r.state, RunState::Queued | RunState::Unconfirmed))
        .map(|r| InProgressRun {
            based_on_local_workspace: false,
            branch: r.commit.branch.clone(),
            created_at: r.created_at,
            id: r.id.clone(),
            state: r.state.as_str().to_string(),
            triggered_by: (!r.triggered_by.starts_with("git:")).then(|| r.triggered_by.clone()),
            r#type: r.run_type.as_str().to_string(),
            updated_at: r.updated_at,
            user_provided_metadata: Vec::new(),
        })
        .collect()
}

async fn handle_stack(
    state: &AppState,
    all: &[cairn_store::PolicyRecord],
    stack: &Stack,
    event: &PushEvent,
) -> Result<PushResult> {
    let unfinished = state.store.unfinished_runs(&stack.id).await?;
    let input = PushInput {
        push: event.push.clone(),
        pull_request: event.pull_request.clone(),
        stack: stack_info(stack),
        in_progress: in_progress(&unfinished),
        vcs_integration: None,
    };
    let policies = select(state, all, PolicyKind::Push, stack);
    let mut evaluations = Vec::new();
    let decision = if policies.is_empty() {
        default_push_decision(&input)
    } else {
        let prepared = prepare_input(&input);
        let mut decisions = Vec::new();
        for p in &policies {
            let ev = match &prepared {
                Ok((value, json)) => {
                    evaluate(p.compiled.clone(), value.clone(), json.clone()).await
                }
                Err(e) => super::Evaluated {
                    decision: Err(cairn_policy::PolicyError::Input(e.to_string())),
                    input_json: serde_json::Value::Null,
                    micros: 0,
                },
            };
            if let Ok(Decision::Push(d)) = &ev.decision {
                decisions.push(d.clone());
            }
            evaluations.push((p, ev));
        }
        // A policy that failed to evaluate says nothing; if none could, the push is ignored.
        PushDecision::combine(decisions)
    };
    let ctx = PushContext {
        from_fork: event.from_fork,
        stack_locked_by: Some(stack.locked_by.as_str()).filter(|s| !s.is_empty()),
        in_progress: &input.in_progress,
    };
    let outcome = resolve_push(&decision, &ctx);
    let mut result = PushResult {
        stack_id: stack.id.clone(),
        outcome: outcome.clone(),
        run: None,
        canceled: Vec::new(),
        notes: Vec::new(),
    };
    apply(state, stack, event, &outcome, &mut result).await?;
    let run_id = result
        .run
        .as_ref()
        .map(|r| r.id.clone())
        .unwrap_or_default();
    for (p, ev) in &evaluations {
        record_sample(state, &p.record, &run_id, ev, &result.notes).await;
    }
    Ok(result)
}

async fn apply(
    state: &AppState,
    stack: &Stack,
    event: &PushEvent,
    outcome: &PushOutcome,
    result: &mut PushResult,
) -> Result<()> {
    let notes = &mut result.notes;
    if let Some(owner) = &outcome.release_lock {
        let owner = owner.clone();
        state
            .mutate_stack(&stack.id, move |s| {
                if decide_unlock(&s.locked_by, &owner, false) == UnlockOutcome::Unlocked {
                    s.locked_by.clear();
                    s.lock_note.clear();
                }
                Ok(())
            })
            .await?;
        notes.push(format!(
            "stack unlocked (lock {})",
            outcome.release_lock.as_deref().unwrap_or_default()
        ));
    }
    match &outcome.action {
        PushAction::Ignore { reason } => {
            notes.push(format!("ignored: {reason:?}"));
            return Ok(());
        }
        PushAction::Reject { locked_by } => {
            notes.push(format!("stack is locked by {locked_by}: no run"));
            return Ok(());
        }
        PushAction::Track { .. } | PushAction::Propose => {}
    }
    if let Some(owner) = &outcome.acquire_lock {
        let owner_c = owner.clone();
        let mut refused = None;
        let locked = state
            .mutate_stack(&stack.id, move |s| {
                match decide_lock(&s.locked_by, &owner_c) {
                    LockOutcome::Locked => {
                        s.locked_by = owner_c.clone();
                        s.lock_note = "locked by push policy".into();
                    }
                    LockOutcome::AlreadyHeld | LockOutcome::HeldByOther(_) => {}
                }
                Ok(())
            })
            .await?;
        if locked.locked_by != *owner {
            refused = Some(locked.locked_by);
        }
        if let Some(holder) = refused {
            // Someone else took the lock between reading the stack and now: same as Reject.
            notes.push(format!("stack is locked by {holder}: no run"));
            return Ok(());
        }
        notes.push(format!("stack locked by {owner}"));
    }
    if outcome.sets_head_commit() {
        let commit = event.commit.clone();
        state
            .mutate_stack(&stack.id, move |s| {
                s.tracked_commit = Some(commit.clone());
                Ok(())
            })
            .await?;
        notes.push(format!("head commit set to {}", event.commit.hash));
    }
    if !outcome.creates_run() {
        notes.push("notrigger: no run".into());
        return Ok(());
    }
    let run_type = match outcome.action {
        PushAction::Propose => RunType::Proposed,
        _ => RunType::Tracked,
    };
    if let Some(dup) = existing_run(state, &stack.id, &event.commit.hash, run_type).await? {
        notes.push(format!(
            "run {dup} already exists for commit {} ({}): no new run",
            event.commit.hash,
            run_type.as_str()
        ));
        return Ok(());
    }
    for id in &outcome.cancel {
        let note = "canceled by push policy";
        match state
            .transition(id, RunEvent::Cancel, note, RunPatch::default())
            .await
        {
            Ok(run) => {
                state.system_log(id, note).await;
                state.artifacts.delete_run(id, &run.artifact_id).await;
                result.canceled.push(id.clone());
                notes.push(format!("canceled run {id}"));
            }
            Err(e) => notes.push(format!("run {id} not canceled: {e}")),
        }
    }
    let event_name = if event.pull_request.is_some() {
        "pull_request"
    } else {
        "push"
    };
    let run = create_run(
        state,
        stack,
        NewRun {
            run_type,
            commit: event.commit.clone(),
            triggered_by: format!("git:{event_name}"),
            workflow_id: None,
            prioritized: outcome.prioritize,
            flags: outcome.flags.iter().cloned().collect(),
            pull_request: event
                .pull_request
                .as_ref()
                .and_then(|pr| u64::try_from(pr.id).ok()),
        },
    )
    .await?;
    notes.push(format!("created {} run {}", run_type.as_str(), run.id));
    result.run = Some(run);
    Ok(())
}

/// A run of `stack` for the same commit and type, among its recent runs.
async fn existing_run(
    state: &AppState,
    stack_id: &str,
    sha: &str,
    run_type: RunType,
) -> Result<Option<String>> {
    let recent = state
        .store
        .list_runs(stack_id, &Page::first(Page::MAX_SIZE))
        .await?;
    Ok(recent
        .items
        .iter()
        .find(|r| r.commit.hash == sha && r.run_type == run_type)
        .map(|r| r.id.clone()))
}
