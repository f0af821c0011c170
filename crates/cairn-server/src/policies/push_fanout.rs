//! One push applied to many stacks at once: a change to a shared module of a monorepo reaches
//! thousands of stacks, and doing each stack's reads and writes one after the other took
//! seconds. The result is the one stack-by-stack handling would give:
//!
//! 1. one read of every stack's unfinished runs (the policies' `in_progress`);
//! 2. push policies evaluated in parallel on the blocking pool, one chunk of stacks per core,
//!    each evaluation on a clone of the shared compiled policy (no lock held while evaluating);
//!    stacks without push policies get the default behaviour inline;
//! 3. stacks whose outcome only moves the head commit and/or creates a run are written in two
//!    batches: one `update_stacks` for the head commits, one `create_runs_dedup` (one
//!    transaction, the store's per-(stack, deployment, commit, type) key deduplicating against
//!    earlier and concurrent pushes). Outcomes that lock, unlock or cancel runs go through
//!    [`super::push`]'s per-stack path. New tracked runs are plain runs either way: the
//!    scheduler turns those of deployment stacks into deployment runs
//!    ([`crate::deployments::adopt_tracked_runs`]);
//! 4. approval policies for the new runs that have any, one scheduler wake-up, and the
//!    samples: of many evaluations of one policy only the newest `policy_samples_kept` would
//!    survive the store's trimming, so only those are written.

use std::collections::HashMap;
use std::sync::Arc;

use cairn_core::{Run, RunType, Stack};
use cairn_policy::input::PushInput;
use cairn_policy::{
    default_push_decision, resolve_push, Decision, PolicyKind, PushAction, PushContext,
    PushDecision, PushOutcome,
};
use cairn_store::{Dedup, PolicyRecord, StoreError};

use super::push::{apply, in_progress, PushEvent, PushResult};
use super::{approval, Evaluated, NewRun};
use super::{evaluate_blocking, prepare_input, record_sample, select, stack_info, Active};
use crate::error::{Result, ServerError};
use crate::state::AppState;

/// One stack's decision, before anything is written.
struct Decided {
    outcome: PushOutcome,
    /// (policy, evaluation) in policy order.
    evaluations: Vec<(Active, Evaluated)>,
}

/// Applies `event` to `stacks` (in their order) as [`super::push::handle_push_for`] documents.
pub(super) async fn handle(
    state: &AppState,
    all: &[PolicyRecord],
    stacks: &[Stack],
    event: &PushEvent,
) -> Result<Vec<PushResult>> {
    let ids: Vec<String> = stacks.iter().map(|s| s.id.clone()).collect();
    let mut open: HashMap<String, Vec<Run>> = HashMap::new();
    for run in state.store.unfinished_runs_of(&ids).await? {
        open.entry(run.stack_id.clone()).or_default().push(run);
    }

    let decided = decide_all(state, all, stacks, &open, event).await?;

    let mut results: Vec<PushResult> = stacks
        .iter()
        .zip(&decided)
        .map(|(stack, d)| PushResult {
            stack_id: stack.id.clone(),
            outcome: d.outcome.clone(),
            run: None,
            canceled: Vec::new(),
            notes: Vec::new(),
        })
        .collect();

    let mut heads = Vec::new();
    let mut new_runs = Vec::new();
    for (i, stack) in stacks.iter().enumerate() {
        let outcome = &decided[i].outcome;
        let result = &mut results[i];
        if !batchable(outcome) {
            apply(state, stack, event, outcome, result).await?;
            continue;
        }
        match &outcome.action {
            PushAction::Ignore { reason } => {
                result.notes.push(format!("ignored: {reason:?}"));
                continue;
            }
            PushAction::Reject { locked_by } => {
                result
                    .notes
                    .push(format!("stack is locked by {locked_by}: no run"));
                continue;
            }
            PushAction::Track { .. } | PushAction::Propose => {}
        }
        if outcome.sets_head_commit() {
            heads.push(i);
        }
        if outcome.creates_run() {
            new_runs.push((i, new_run(stack, event, outcome)));
        }
    }

    set_head_commits(state, stacks, &heads, event, &mut results).await?;
    for &i in &heads {
        let notes = &mut results[i].notes;
        notes.push(format!("head commit set to {}", event.commit.hash));
        if !decided[i].outcome.creates_run() {
            notes.push("notrigger: no run".into());
        }
    }

    create_runs(state, all, stacks, new_runs, event, &mut results).await?;

    record_samples(state, decided, &results).await;
    Ok(results)
}

/// Whether the batch can carry out `outcome` on `stack`: it moves the head commit and creates
/// runs, nothing else.
fn batchable(outcome: &PushOutcome) -> bool {
    outcome.release_lock.is_none() && outcome.acquire_lock.is_none() && outcome.cancel.is_empty()
}

/// Every stack's outcome, evaluating push policies in parallel.
async fn decide_all(
    state: &AppState,
    all: &[PolicyRecord],
    stacks: &[Stack],
    open: &HashMap<String, Vec<Run>>,
    event: &PushEvent,
) -> Result<Vec<Decided>> {
    let mut inputs = Vec::with_capacity(stacks.len());
    let mut with_policies = Vec::new();
    for (i, stack) in stacks.iter().enumerate() {
        let input = PushInput {
            push: event.push.clone(),
            pull_request: event.pull_request.clone(),
            stack: stack_info(stack),
            in_progress: in_progress(open.get(&stack.id).map_or(&[][..], Vec::as_slice)),
            vcs_integration: None,
        };
        let policies = select(state, all, PolicyKind::Push, stack);
        if !policies.is_empty() {
            with_policies.push((i, policies));
        }
        inputs.push(input);
    }
    let inputs = Arc::new(inputs);

    let mut evaluated: Vec<Vec<(Active, Evaluated)>> =
        (0..stacks.len()).map(|_| Vec::new()).collect();
    if !with_policies.is_empty() {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_chunk = with_policies.len().div_ceil(workers);
        let mut tasks = Vec::new();
        let mut jobs = with_policies.into_iter();
        loop {
            let chunk: Vec<_> = jobs.by_ref().take(per_chunk).collect();
            if chunk.is_empty() {
                break;
            }
            let inputs = inputs.clone();
            tasks.push(tokio::task::spawn_blocking(move || {
                chunk
                    .into_iter()
                    .map(|(i, policies)| (i, evaluate_stack(&inputs[i], policies)))
                    .collect::<Vec<_>>()
            }));
        }
        for task in tasks {
            let done = task
                .await
                .map_err(|e| ServerError::Internal(format!("push policy evaluation: {e}")))?;
            for (i, evs) in done {
                evaluated[i] = evs;
            }
        }
    }

    Ok(stacks
        .iter()
        .zip(inputs.iter())
        .zip(evaluated)
        .map(|((stack, input), evaluations)| {
            let decision = if evaluations.is_empty() {
                default_push_decision(input)
            } else {
                // A policy that failed to evaluate says nothing; if none could, the push is
                // ignored.
                PushDecision::combine(
                    evaluations
                        .iter()
                        .filter_map(|(_, ev)| match &ev.decision {
                            Ok(Decision::Push(d)) => Some(d.clone()),
                            _ => None,
                        })
                        .collect::<Vec<_>>(),
                )
            };
            let ctx = PushContext {
                from_fork: event.from_fork,
                stack_locked_by: Some(stack.locked_by.as_str()).filter(|s| !s.is_empty()),
                in_progress: &input.in_progress,
            };
            Decided {
                outcome: resolve_push(&decision, &ctx),
                evaluations,
            }
        })
        .collect())
}

/// One stack's push policies, in order, on the calling (blocking) thread.
fn evaluate_stack(input: &PushInput, policies: Vec<Active>) -> Vec<(Active, Evaluated)> {
    let prepared = prepare_input(input);
    policies
        .into_iter()
        .map(|p| {
            let ev = match &prepared {
                Ok((value, json)) => evaluate_blocking(&p.compiled, value.clone(), json.clone()),
                Err(e) => Evaluated {
                    decision: Err(cairn_policy::PolicyError::Input(e.to_string())),
                    input_json: serde_json::Value::Null,
                    micros: 0,
                },
            };
            (p, ev)
        })
        .collect()
}

/// The run [`super::push::apply`] would create for this outcome.
fn new_run(stack: &Stack, event: &PushEvent, outcome: &PushOutcome) -> Run {
    let event_name = if event.pull_request.is_some() {
        "pull_request"
    } else {
        "push"
    };
    super::new_run(
        stack,
        NewRun {
            run_type: match outcome.action {
                PushAction::Propose => RunType::Proposed,
                _ => RunType::Tracked,
            },
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
}

/// Moves the head commit of `stacks[heads]` in one write. A stack changed since it was read
/// (a lock, an update) fails the batch; then each stack is updated on its own from its current
/// version, as the per-stack path does.
async fn set_head_commits(
    state: &AppState,
    stacks: &[Stack],
    heads: &[usize],
    event: &PushEvent,
    results: &mut [PushResult],
) -> Result<()> {
    let now = cairn_core::now_nanos();
    let changed: Vec<Stack> = heads
        .iter()
        .map(|&i| &stacks[i])
        .filter(|s| s.tracked_commit.as_ref() != Some(&event.commit))
        .map(|s| {
            let mut s = s.clone();
            s.tracked_commit = Some(event.commit.clone());
            s.updated_at = now;
            s
        })
        .collect();
    match state.store.update_stacks(changed.clone()).await {
        Ok(_) => Ok(()),
        Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {
            for s in changed {
                let commit = event.commit.clone();
                let res = state
                    .mutate_stack(&s.id, move |s| {
                        s.tracked_commit = Some(commit.clone());
                        Ok(())
                    })
                    .await;
                if let Err(e) = res {
                    // Deleted since the push was read: as if it had not been there.
                    if let Some(r) = results.iter_mut().find(|r| r.stack_id == s.id) {
                        r.notes.push(format!("head commit not set: {e}"));
                    }
                }
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Inserts the batch's runs in one transaction, then does what [`super::create_run`] does after
/// each: approval policies where any apply, and one scheduler wake-up for all.
async fn create_runs(
    state: &AppState,
    all: &[PolicyRecord],
    stacks: &[Stack],
    new_runs: Vec<(usize, Run)>,
    event: &PushEvent,
    results: &mut [PushResult],
) -> Result<()> {
    if new_runs.is_empty() {
        return Ok(());
    }
    let (at, runs): (Vec<usize>, Vec<Run>) = new_runs.into_iter().unzip();
    let done = state.store.create_runs_dedup(runs).await?;
    for (i, d) in at.into_iter().zip(done) {
        let result = &mut results[i];
        match d {
            Dedup::Created(run) => {
                tracing::info!(run.id = %run.id, stack.id = %run.stack_id, run.type = run.run_type.as_str(), triggered_by = %run.triggered_by, "run created by policy");
                if approval::has_approval_policies(all, &stacks[i]) {
                    if let Err(e) = approval::evaluate_approval(state, &run.id).await {
                        tracing::warn!(run.id = %run.id, error = %e, "approval policies not evaluated");
                    }
                }
                result
                    .notes
                    .push(format!("created {} run {}", run.run_type.as_str(), run.id));
                result.run = Some(run);
            }
            Dedup::Existing(run) => result.notes.push(format!(
                "run {} already exists for commit {} ({}): no new run",
                run.id,
                event.commit.hash,
                run.run_type.as_str()
            )),
        }
    }
    state.wake_scheduler();
    Ok(())
}

/// Stores the samples of the newest `policy_samples_kept` evaluations of each policy (the
/// store keeps no more than that per policy), in stack order.
async fn record_samples(state: &AppState, decided: Vec<Decided>, results: &[PushResult]) {
    let keep = state.config.policy_samples_kept.max(1) as usize;
    let mut per_policy: HashMap<String, usize> = HashMap::new();
    for d in &decided {
        for (p, _) in &d.evaluations {
            *per_policy.entry(p.record.id.clone()).or_default() += 1;
        }
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (d, result) in decided.iter().zip(results) {
        let run_id = result.run.as_ref().map(|r| r.id.as_str()).unwrap_or("");
        for (p, ev) in &d.evaluations {
            let n = seen.entry(p.record.id.clone()).or_default();
            *n += 1;
            if *n + keep > per_policy[&p.record.id] {
                record_sample(state, &p.record, run_id, ev, &result.notes).await;
            }
        }
    }
}
