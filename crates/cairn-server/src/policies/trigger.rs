//! Trigger policies: evaluated when a blocking run (tracked, task) reaches a terminal state.
//!
//! One task drains the queue filled by [`AppState::transition`](crate::state::AppState) and
//! evaluates in rounds: the `stacks` document (every stack) is built once per round and shared
//! by all evaluations of the round. Each stack id a policy returns gets a tracked run at its
//! head commit in the same workflow, triggered by `trigger_policy:<policy id>`. Not triggered,
//! with a note in the sample: unknown stacks, stacks without a tracked commit, a stack already
//! triggered by this evaluation, a stack whose workflow run was created after the finished run
//! ended (another evaluation already reacted to the same situation: this keeps the diamond's
//! last stack to one run when both predecessors' evaluations see both finished), and anything
//! beyond `max_workflow_runs` runs in the workflow.

use std::collections::HashSet;
use std::sync::Arc;

use cairn_core::{RunType, Stack};
use cairn_policy::input::{StacksDocument, TriggerInput, WorkflowRun};
use cairn_policy::{Decision, PolicyKind};
use cairn_store::PolicyRecord;

use super::{
    create_run, evaluate, prepare_input, record_sample, run_info, select, stack_info, Job, NewRun,
};
use crate::error::{Result, ServerError};
use crate::state::AppState;

/// The policy task: runs until shutdown. Consecutive finished runs form one trigger round.
pub async fn run_loop(state: Arc<AppState>) {
    let Some(mut rx) = state.policies.take_trigger_queue() else {
        return;
    };
    loop {
        let first = tokio::select! {
            m = rx.recv() => m,
            _ = state.shutdown.cancelled() => return,
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        while let Ok(job) = rx.try_recv() {
            batch.push(job);
        }
        let mut finished = Vec::new();
        for job in batch {
            match job {
                Job::Finished(id) => finished.push(id),
                Job::Review(id) => {
                    flush(&state, &mut finished).await;
                    if let Err(e) = super::approval::evaluate_approval(&state, &id).await {
                        tracing::warn!(run.id = %id, error = %e, "approval policies not evaluated");
                    }
                }
            }
        }
        flush(&state, &mut finished).await;
    }
}

async fn flush(state: &AppState, finished: &mut Vec<String>) {
    if finished.is_empty() {
        return;
    }
    if let Err(e) = round(state, finished).await {
        tracing::warn!(error = %e, "trigger policy round failed");
    }
    finished.clear();
}

/// Evaluates the trigger policies for each finished run of `batch`, in order.
pub async fn round(state: &AppState, batch: &[String]) -> Result<()> {
    let all = state.store.all_policies().await?;
    if !all.iter().any(|p| p.kind == PolicyKind::Trigger.as_str()) {
        return Ok(());
    }
    let stacks = state.store.all_stacks().await?;
    let infos: Vec<_> = stacks.iter().map(stack_info).collect();
    let doc = StacksDocument::new(&infos)
        .map_err(|e| ServerError::Internal(format!("stacks document: {e}")))?;
    for run_id in batch {
        if let Err(e) = evaluate_run(state, &stacks, &doc, &all, run_id).await {
            tracing::warn!(run.id = %run_id, error = %e, "trigger policies not evaluated");
        }
    }
    Ok(())
}

async fn evaluate_run(
    state: &AppState,
    stacks: &[Stack],
    doc: &StacksDocument,
    all: &[PolicyRecord],
    run_id: &str,
) -> Result<()> {
    let run = state.store.get_run(run_id).await?;
    if !run.run_type.is_blocking() || !run.state.is_terminal() {
        return Ok(());
    }
    let Some(stack) = stacks.iter().find(|s| s.id == run.stack_id) else {
        return Ok(());
    };
    let policies = select(state, all, PolicyKind::Trigger, stack);
    if policies.is_empty() {
        return Ok(());
    }
    let workflow_runs = state.store.workflow_runs(&run.workflow_id).await?;
    let input = TriggerInput {
        run: run_info(&run, stack),
        stack: stack_info(stack),
        stacks: doc.clone(),
        workflow: workflow_runs
            .iter()
            .map(|r| WorkflowRun {
                id: r.id.clone(),
                stack_id: r.stack_id.clone(),
                state: r.state.as_str().to_string(),
                r#type: r.run_type.as_str().to_string(),
            })
            .collect(),
    };
    let (value, json) =
        prepare_input(&input).map_err(|e| ServerError::Internal(format!("trigger input: {e}")))?;
    let finished_at = run
        .states_history
        .last()
        .map(|t| t.timestamp)
        .unwrap_or(run.updated_at);
    let max = state.config.max_workflow_runs as usize;
    let mut in_workflow = workflow_runs.len();
    let mut triggered: HashSet<String> = HashSet::new();
    let mut flags = Vec::new();
    for p in policies {
        let ev = evaluate(p.compiled.clone(), value.clone(), json.clone()).await;
        let mut notes = Vec::new();
        if let Ok(Decision::Trigger(d)) = &ev.decision {
            flags.extend(d.flag.iter().cloned());
            for target in &d.trigger {
                let Some(target_stack) = stacks.iter().find(|s| s.id == *target) else {
                    notes.push(format!("stack {target:?} does not exist: skipped"));
                    continue;
                };
                if triggered.contains(target) {
                    notes.push(format!(
                        "stack {target} was already triggered by this evaluation: skipped"
                    ));
                    continue;
                }
                let current = state.store.workflow_runs(&run.workflow_id).await?;
                if let Some(other) = current
                    .iter()
                    .find(|r| r.stack_id == *target && r.created_at >= finished_at)
                {
                    notes.push(format!(
                        "stack {target} already has run {} in this workflow since run {} ended: skipped",
                        other.id, run.id
                    ));
                    continue;
                }
                in_workflow = in_workflow.max(current.len());
                if in_workflow >= max {
                    notes.push(format!(
                        "workflow {} has {in_workflow} runs, the limit (max_workflow_runs = {max}): stack {target} not triggered",
                        run.workflow_id
                    ));
                    continue;
                }
                let Some(commit) = target_stack.tracked_commit.clone() else {
                    notes.push(format!("stack {target} has no tracked commit: skipped"));
                    continue;
                };
                let created = create_run(
                    state,
                    target_stack,
                    NewRun {
                        run_type: RunType::Tracked,
                        commit,
                        triggered_by: format!("trigger_policy:{}", p.record.id),
                        workflow_id: Some(run.workflow_id.clone()),
                        prioritized: false,
                        flags: Vec::new(),
                        pull_request: None,
                    },
                )
                .await?;
                in_workflow += 1;
                triggered.insert(target.clone());
                notes.push(format!("triggered run {} on stack {target}", created.id));
            }
        }
        record_sample(state, &p.record, &run.id, &ev, &notes).await;
    }
    super::add_flags(state, &run.id, &flags).await
}
