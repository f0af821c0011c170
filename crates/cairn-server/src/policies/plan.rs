//! Plan policies: evaluated once planning produced a result, before the run moves on.

use std::collections::BTreeSet;

use cairn_core::{Run, Stack};
use cairn_policy::input::{PlanContext, PlanInput, RequestInfo};
use cairn_policy::{Decision, PlanDecision, PolicyKind};
use serde_json::Value as Json;

use super::{evaluate, prepare_input, record_sample, run_info, select, stack_info};
use crate::error::Result;
use crate::state::AppState;

/// What the plan policies of a stack concluded about one plan.
#[derive(Debug, Default)]
pub struct PlanVerdict {
    pub denies: Vec<String>,
    pub warnings: Vec<String>,
    /// The run's flags with those the policies added.
    pub flags: Vec<String>,
    /// At least one approval policy applies to the stack.
    pub approval_policies: bool,
}

/// Whether any plan policy (attached or auto-attached) applies to `stack`.
pub async fn any_for(state: &AppState, stack: &Stack) -> Result<bool> {
    let all = state.store.all_policies().await?;
    Ok(!select(state, &all, PolicyKind::Plan, stack).is_empty())
}

/// Evaluates the plan policies of `stack` for `run`, whose `changes`, `delta` and `plan_json`
/// already hold the plan's result.
pub async fn evaluate_plan(state: &AppState, run: &Run, stack: &Stack) -> Result<PlanVerdict> {
    let all = state.store.all_policies().await?;
    let policies = select(state, &all, PolicyKind::Plan, stack);
    let approval_policies = !select(state, &all, PolicyKind::Approval, stack).is_empty();
    let mut flags: BTreeSet<String> = run.flags.iter().cloned().collect();
    if policies.is_empty() {
        return Ok(PlanVerdict {
            flags: flags.into_iter().collect(),
            approval_policies,
            ..Default::default()
        });
    }
    let plan_doc = if run.plan_json.trim().is_empty() {
        Json::Object(Default::default())
    } else {
        serde_json::from_str(&run.plan_json).unwrap_or_else(|e| {
            tracing::warn!(run.id = %run.id, error = %e, "plan JSON is not JSON; policies see {{}}");
            Json::Object(Default::default())
        })
    };
    let mut input = PlanInput {
        spacelift: PlanContext {
            commit: super::commit_info(&run.commit),
            request: RequestInfo {
                timestamp_ns: cairn_core::now_nanos(),
            },
            previous_run: None,
            run: run_info(run, stack),
            stack: stack_info(stack),
        },
        ..Default::default()
    };
    match stack.vendor.as_str() {
        "pulumi" => input.pulumi = Some(plan_doc),
        "ansible" => input.ansible = Some(plan_doc),
        // The terraform family (terraform, opentofu) and third-party vendors: Spacelift shows
        // every Terraform-compatible plan under `terraform`.
        _ => input.terraform = Some(plan_doc),
    }
    let mut decisions = Vec::new();
    for p in policies {
        // Each policy sees the flags earlier policies set.
        input.spacelift.run.flags = flags.iter().cloned().collect();
        let ev = match prepare_input(&input) {
            Ok((value, json)) => evaluate(p.compiled.clone(), value, json).await,
            Err(e) => super::Evaluated {
                decision: Err(e),
                input_json: Json::Null,
                micros: 0,
            },
        };
        record_sample(state, &p.record, &run.id, &ev, &[]).await;
        match &ev.decision {
            Ok(Decision::Plan(d)) => {
                flags.extend(d.flag.iter().cloned());
                decisions.push(d.clone());
            }
            Ok(other) => decisions.push(PlanDecision {
                deny: [format!(
                    "policy {} returned a {:?} decision",
                    p.record.id,
                    std::mem::discriminant(other)
                )]
                .into(),
                ..Default::default()
            }),
            Err(e) => decisions.push(PlanDecision {
                deny: [format!(
                    "policy {} could not be evaluated: {e}",
                    p.record.id
                )]
                .into(),
                ..Default::default()
            }),
        }
    }
    let combined = PlanDecision::combine(decisions);
    Ok(PlanVerdict {
        denies: combined.deny.into_iter().collect(),
        warnings: combined.warn.into_iter().collect(),
        flags: flags.into_iter().collect(),
        approval_policies,
    })
}

impl PlanVerdict {
    /// The run's error when the plan is denied.
    pub fn error(&self) -> Option<String> {
        (!self.denies.is_empty())
            .then(|| format!("denied by plan policy: {}", self.denies.join("; ")))
    }
}

/// The plan-result hook: evaluates the plan policies of the run's stack against the run as
/// planning left it and writes the denials and warnings to the run's log.
pub async fn after_plan(
    state: &AppState,
    run: &Run,
    changes: &[cairn_core::Change],
    delta: &cairn_core::Delta,
    no_op: bool,
    plan_json: &str,
) -> Result<PlanVerdict> {
    let stack = state.store.get_stack(&run.stack_id).await?;
    let mut planned = run.clone();
    planned.changes = changes.to_vec();
    planned.delta = *delta;
    planned.no_op = no_op;
    planned.plan_json = plan_json.to_string();
    let verdict = evaluate_plan(state, &planned, &stack).await?;
    for w in &verdict.warnings {
        state
            .system_log(&run.id, format!("plan policy warning: {w}"))
            .await;
    }
    for d in &verdict.denies {
        state
            .system_log(&run.id, format!("plan policy denial: {d}"))
            .await;
    }
    Ok(verdict)
}
