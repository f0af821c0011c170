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
use cairn_policy::input::{InProgressRun, PullRequest, PushCommit};
use cairn_policy::{PushAction, PushOutcome};
use cairn_store::Dedup;

use super::{create_vcs_run, NewRun};
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
    let stacks: Vec<Stack> = state
        .store
        .all_stacks()
        .await?
        .into_iter()
        .filter(|s| s.repository == event.repository)
        .collect();
    handle_push_for(state, &stacks, event).await
}

/// [`handle_push`] for the given stacks only, whatever their `repository` (for callers that
/// match repositories and integrations themselves, e.g. the VCS webhook processor). Many
/// stacks are handled as one batch (see [`super::push_fanout`]).
pub async fn handle_push_for(
    state: &AppState,
    stacks: &[Stack],
    event: &PushEvent,
) -> Result<Vec<PushResult>> {
    let all = state.store.all_policies().await?;
    super::push_fanout::handle(state, &all, stacks, event).await
}

pub(super) fn in_progress(runs: &[Run]) -> Vec<InProgressRun> {
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

/// Carries out `outcome` on one stack: locks, head commit, cancelations, the run.
pub(super) async fn apply(
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
    let event_name = if event.pull_request.is_some() {
        "pull_request"
    } else {
        "push"
    };
    let run = match create_vcs_run(
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
    .await?
    {
        Dedup::Created(run) => run,
        // The store keeps one run per (stack, deployment, commit, type) whoever asks: a push
        // and its pull request, a redelivery, another replica handling the same event.
        Dedup::Existing(dup) => {
            result.notes.push(format!(
                "run {} already exists for commit {} ({}): no new run",
                dup.id,
                event.commit.hash,
                run_type.as_str()
            ));
            return Ok(());
        }
    };
    // Pre-empt only once this event's run exists: a duplicate event cancels nothing.
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
                result.notes.push(format!("canceled run {id}"));
            }
            Err(e) => result.notes.push(format!("run {id} not canceled: {e}")),
        }
    }
    super::after_run_created(state, &run).await;
    result
        .notes
        .push(format!("created {} run {}", run_type.as_str(), run.id));
    result.run = Some(run);
    Ok(())
}
