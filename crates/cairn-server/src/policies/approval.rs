//! Approval policies: decide QUEUED, UNCONFIRMED and PENDING_REVIEW runs from their reviews.
//!
//! The outcome reached in a state is stored per (run, state):
//! - QUEUED: the scheduler leaves the run waiting until it is approved.
//! - UNCONFIRMED: ConfirmRun is refused (FAILED_PRECONDITION) until it is approved.
//! - PENDING_REVIEW: approval moves the run on at once (tracked runs and tasks to UNCONFIRMED,
//!   already approved there since the same plan was reviewed; proposed runs finish).
//!
//! Rejection fails the run in any of the three states. Runs are re-evaluated on entering one of
//! these states and after every review.

use std::collections::BTreeMap;

use cairn_core::{Principal, Run, RunEvent, RunPatch, RunState, RunType, Stack};
use cairn_policy::input::{
    ApprovalInput, Review, ReviewRequest, ReviewSession, ReviewSet, Reviews,
};
use cairn_policy::{ApprovalDecision, ApprovalOutcome, Decision, PolicyKind};
use cairn_store::{PolicyRecord, ReviewRecord};

use super::{applies_to, evaluate, prepare_input, record_sample, reviewable, run_info, stack_info};
use crate::error::{Result, ServerError};
use crate::state::AppState;

pub const APPROVED: &str = "APPROVED";
pub const REJECTED: &str = "REJECTED";
pub const UNDECIDED: &str = "UNDECIDED";

fn outcome_text(o: ApprovalOutcome) -> &'static str {
    match o {
        ApprovalOutcome::Approved => APPROVED,
        ApprovalOutcome::Rejected => REJECTED,
        ApprovalOutcome::Undecided => UNDECIDED,
    }
}

/// Whether any approval policy applies to `stack` (no compilation needed).
pub fn has_approval_policies(all: &[PolicyRecord], stack: &Stack) -> bool {
    all.iter()
        .any(|p| p.kind == PolicyKind::Approval.as_str() && applies_to(p, stack))
}

/// Whether the scheduler may hand out a QUEUED run: always without approval policies,
/// otherwise only once they approved it in QUEUED.
pub async fn may_dispatch(
    state: &AppState,
    all: &[PolicyRecord],
    run: &Run,
    stack: &Stack,
) -> Result<bool> {
    if run.state != RunState::Queued || !has_approval_policies(all, stack) {
        return Ok(true);
    }
    Ok(state
        .store
        .run_approval(&run.id, RunState::Queued.as_str())
        .await?
        == Some(APPROVED.to_string()))
}

/// Refuses to confirm an UNCONFIRMED run that approval policies have not approved.
pub async fn check_confirm(state: &AppState, run: &Run) -> Result<()> {
    if run.state != RunState::Unconfirmed {
        return Ok(());
    }
    let stack = state.store.get_stack(&run.stack_id).await?;
    let all = state.store.all_policies().await?;
    if !has_approval_policies(&all, &stack) {
        return Ok(());
    }
    match state
        .store
        .run_approval(&run.id, RunState::Unconfirmed.as_str())
        .await?
        .as_deref()
    {
        Some(APPROVED) => Ok(()),
        _ => Err(ServerError::precondition(format!(
            "run {} needs approval before it can be confirmed: approval policies are attached to stack {}",
            run.id, stack.id
        ))),
    }
}

/// Stores a review (the run keeps each reviewer's newest; the review table keeps all, with
/// the state they were made in) and lets the approval policies decide again.
pub async fn review(
    state: &AppState,
    p: &Principal,
    ip: &str,
    run_id: &str,
    approve: bool,
    note: &str,
) -> Result<Run> {
    let login = p.login.clone();
    let note_owned = note.to_string();
    let run = state
        .mutate_run(run_id, |run, now| {
            if run.state.is_terminal() {
                return Err(cairn_core::CoreError::FailedPrecondition(format!(
                    "run is {}: reviews are closed",
                    run.state
                )));
            }
            run.record_review(
                cairn_core::Review {
                    login: login.clone(),
                    approve,
                    note: note_owned.clone(),
                    timestamp: now,
                },
                now,
            );
            Ok(())
        })
        .await?;
    state
        .store
        .add_review(ReviewRecord {
            run_id: run.id.clone(),
            login: p.login.clone(),
            name: p.name.clone(),
            teams: p.teams.clone(),
            approve,
            note: note.to_string(),
            run_state: run.state.as_str().to_string(),
            remote_ip: ip.to_string(),
            timestamp: cairn_core::now_nanos(),
        })
        .await?;
    evaluate_approval(state, run_id).await?;
    Ok(state.store.get_run(run_id).await?)
}

/// `reviews.current` (made in the run's current state) and `reviews.older` (one set per earlier
/// state), each reviewer's newest review per state only.
pub fn reviews_input(records: &[ReviewRecord], current_state: &str) -> Reviews {
    let mut by_state: BTreeMap<&str, BTreeMap<&str, &ReviewRecord>> = BTreeMap::new();
    for r in records {
        by_state
            .entry(r.run_state.as_str())
            .or_default()
            .insert(r.login.as_str(), r);
    }
    let set = |reviews: &BTreeMap<&str, &ReviewRecord>| {
        let mut s = ReviewSet::default();
        for r in reviews.values() {
            let review = Review {
                author: r.login.clone(),
                request: ReviewRequest {
                    remote_ip: r.remote_ip.clone(),
                    timestamp_ns: r.timestamp,
                },
                session: ReviewSession {
                    login: r.login.clone(),
                    name: r.name.clone(),
                    teams: r.teams.clone(),
                },
                state: r.run_state.clone(),
            };
            if r.approve {
                s.approvals.push(review);
            } else {
                s.rejections.push(review);
            }
        }
        s
    };
    Reviews {
        current: by_state.get(current_state).map(set).unwrap_or_default(),
        older: by_state
            .iter()
            .filter(|(st, _)| **st != current_state)
            .map(|(_, r)| set(r))
            .collect(),
    }
}

/// Evaluates the approval policies of a run in a reviewable state, records the outcome for
/// that state and acts on it. `None` when no approval policy applies (or the run is not in a
/// reviewable state).
pub async fn evaluate_approval(state: &AppState, run_id: &str) -> Result<Option<ApprovalOutcome>> {
    let run = state.store.get_run(run_id).await?;
    if !reviewable(run.state) {
        return Ok(None);
    }
    let stack = state.store.get_stack(&run.stack_id).await?;
    let policies = super::attached(state, PolicyKind::Approval, &stack).await?;
    if policies.is_empty() {
        return Ok(None);
    }
    let records = state.store.list_reviews(run_id).await?;
    let mut input = ApprovalInput {
        reviews: reviews_input(&records, run.state.as_str()),
        run: run_info(&run, &stack),
        stack: stack_info(&stack),
    };
    let mut flags: Vec<String> = Vec::new();
    let mut decisions = Vec::new();
    for p in &policies {
        input.run.flags = run.flags.iter().chain(flags.iter()).cloned().collect();
        let ev = match prepare_input(&input) {
            Ok((value, json)) => evaluate(p.compiled.clone(), value, json).await,
            Err(e) => super::Evaluated {
                decision: Err(e),
                input_json: serde_json::Value::Null,
                micros: 0,
            },
        };
        record_sample(state, &p.record, run_id, &ev, &[]).await;
        match ev.decision {
            Ok(Decision::Approval(d)) => {
                flags.extend(d.flag.iter().cloned());
                decisions.push(d);
            }
            // Fail closed: a policy that cannot decide rejects.
            _ => decisions.push(ApprovalDecision {
                reject: true,
                ..Default::default()
            }),
        }
    }
    super::add_flags(state, run_id, &flags).await?;
    let outcome = ApprovalDecision::resolve(&decisions);
    state
        .store
        .set_run_approval(run_id, run.state.as_str(), outcome_text(outcome))
        .await?;
    tracing::info!(run.id = %run_id, run.state = %run.state, outcome = outcome_text(outcome), "approval policies evaluated");
    match outcome {
        ApprovalOutcome::Rejected => {
            let note = "rejected by approval policy";
            match state
                .transition(
                    run_id,
                    RunEvent::Reject,
                    note,
                    RunPatch {
                        error: Some(note.to_string()),
                        ..Default::default()
                    },
                )
                .await
            {
                Ok(run) => {
                    state.system_log(run_id, note).await;
                    state.artifacts.delete_run(run_id, &run.artifact_id).await;
                }
                Err(e) => tracing::info!(run.id = %run_id, error = %e, "rejection not applied"),
            }
        }
        ApprovalOutcome::Approved => match run.state {
            RunState::PendingReview => {
                let event = if run.run_type == RunType::Proposed {
                    RunEvent::FinishProposed
                } else {
                    RunEvent::RequireConfirmation
                };
                match state
                    .transition(
                        run_id,
                        event,
                        "approved by approval policy",
                        RunPatch::default(),
                    )
                    .await
                {
                    Ok(next) if next.state == RunState::Unconfirmed => {
                        state
                            .store
                            .set_run_approval(run_id, RunState::Unconfirmed.as_str(), APPROVED)
                            .await?;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::info!(run.id = %run_id, error = %e, "approval not applied"),
                }
            }
            RunState::Queued => state.wake_scheduler(),
            _ => {}
        },
        ApprovalOutcome::Undecided => {}
    }
    Ok(Some(outcome))
}
