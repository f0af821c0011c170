//! Stack outputs as inputs of other stacks (HCP Terraform's `upstream_input`).
//!
//! - Resolution: a deployment input `{stack, deployment, output}` takes the value of that output
//!   in the upstream deployment's current state when a run of the consuming deployment is leased
//!   for planning (Terraform gets it as `TF_VAR_<input>`: strings raw, other values as JSON). A
//!   reference to an output that does not exist (or to a deployment without state) fails the run
//!   before it plans, naming the stack, deployment and output. Sensitive upstream outputs are
//!   passed in clear to the vendor and masked in the run's logs.
//! - Propagation: every stored state version (a Terraform write, a restore, an import) is
//!   compared with the one it replaced; when outputs changed, every active deployment of another
//!   stack whose inputs refer to a changed output gets a new configuration version of its stack
//!   (source UPSTREAM) at the stack's tracked commit, which queues its runs. That work is done by
//!   a background task fed by the state backend, so that Terraform's state upload never waits
//!   for a git fetch of the downstream repository.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use cairn_core::{ConfigSource, InputValue, Run, RunEvent, RunPatch};
use cairn_store::{StateVersion, StoreError};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::Result;
use crate::state::AppState;

/// Changed outputs of one deployment, waiting for the propagation task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputsChanged {
    pub stack_id: String,
    pub deployment: String,
    pub serial: i64,
    pub outputs: Vec<String>,
}

/// The queue between state writes and the propagation task.
#[derive(Debug)]
pub struct Queue {
    tx: mpsc::UnboundedSender<OutputsChanged>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<OutputsChanged>>>,
}

impl Default for Queue {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Queue {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

/// The root module outputs of a stored version: name → (value, sensitive).
fn raw_outputs(v: &StateVersion) -> HashMap<String, (Value, bool)> {
    serde_json::from_slice::<Value>(&v.body)
        .ok()
        .and_then(|doc| doc.get("outputs").and_then(Value::as_object).cloned())
        .map(|outputs| {
            outputs
                .into_iter()
                .map(|(name, o)| {
                    let sensitive = o.get("sensitive").and_then(Value::as_bool) == Some(true);
                    (
                        name,
                        (o.get("value").cloned().unwrap_or(Value::Null), sensitive),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The names of outputs that differ between two versions (added, removed, changed value or
/// sensitivity), sorted. Sensitive values are compared too: a rotated secret is a change.
pub fn changed_outputs(before: Option<&StateVersion>, after: &StateVersion) -> Vec<String> {
    let old = before.map(raw_outputs).unwrap_or_default();
    let new = raw_outputs(after);
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    names
        .into_iter()
        .filter(|name| old.get(*name) != new.get(*name))
        .cloned()
        .collect()
}

/// Called after every stored state version with the one it replaced (`None` for the first):
/// queues the changed outputs for propagation.
pub async fn outputs_written(
    state: &AppState,
    before: Option<&StateVersion>,
    after: &StateVersion,
) {
    let outputs = changed_outputs(before, after);
    if outputs.is_empty() {
        return;
    }
    tracing::info!(stack.id = %after.stack_id, deployment = %after.deployment,
        serial = after.serial, outputs = ?outputs, "outputs changed");
    let _ = state.upstream.tx.send(OutputsChanged {
        stack_id: after.stack_id.clone(),
        deployment: after.deployment.clone(),
        serial: after.serial,
        outputs,
    });
}

/// The propagation task: runs until shutdown.
pub async fn run_loop(state: Arc<AppState>) {
    let Some(mut rx) = state
        .upstream
        .rx
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    else {
        return;
    };
    loop {
        let change = tokio::select! {
            c = rx.recv() => match c { Some(c) => c, None => return },
            _ = state.shutdown.cancelled() => return,
        };
        if let Err(e) = propagate(&state, &change).await {
            tracing::warn!(stack.id = %change.stack_id, deployment = %change.deployment,
                error = %e, "upstream outputs not propagated");
        }
    }
}

/// The inputs of `input_owner` that refer to one of `change`'s outputs: (input, output).
fn consumed<'a>(
    inputs: &'a std::collections::BTreeMap<String, InputValue>,
    change: &OutputsChanged,
) -> Vec<(&'a str, &'a str)> {
    inputs
        .iter()
        .filter_map(|(name, v)| match v {
            InputValue::Upstream(r)
                if r.stack == change.stack_id
                    && r.deployment == change.deployment
                    && change.outputs.contains(&r.output) =>
            {
                Some((name.as_str(), r.output.as_str()))
            }
            _ => None,
        })
        .collect()
}

/// New configuration versions for every other stack with a deployment consuming a changed
/// output. Returns the stacks that got one.
pub async fn propagate(state: &AppState, change: &OutputsChanged) -> Result<Vec<String>> {
    let mut touched = Vec::new();
    for stack in state.store.all_stacks().await? {
        if stack.id == change.stack_id {
            continue;
        }
        let deployments = state.store.list_deployments(&stack.id).await?;
        let mut notes = Vec::new();
        for d in deployments.iter().filter(|d| d.is_active()) {
            for (input, output) in consumed(&d.inputs, change) {
                notes.push(format!(
                    "input {input} of deployment {} reads output {output} of {}/{}, changed at \
                     serial {}",
                    d.name, change.stack_id, change.deployment, change.serial
                ));
            }
        }
        if notes.is_empty() {
            continue;
        }
        let Some(commit) = stack.tracked_commit.as_ref().map(|c| c.hash.clone()) else {
            tracing::warn!(stack.id = %stack.id, "upstream outputs changed but the stack has no \
                tracked commit: no configuration version");
            continue;
        };
        let (version, runs) = crate::deployments::create_configuration_version(
            state,
            &stack.id,
            ConfigSource::Upstream,
            &commit,
        )
        .await?;
        tracing::info!(stack.id = %stack.id, config_version = version.seq,
            upstream = %change.stack_id, outputs = ?change.outputs,
            "configuration version for changed upstream outputs");
        for run in &runs {
            for note in &notes {
                state.system_log(&run.id, note.clone()).await;
            }
        }
        touched.push(stack.id.clone());
    }
    Ok(touched)
}

/// Upstream inputs of a run resolved to values.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Input name → the value as the vendor gets it.
    pub variables: HashMap<String, String>,
    /// Values of sensitive upstream outputs, to mask in logs.
    pub secrets: Vec<String>,
}

/// Resolves the upstream references among a deployment run's inputs (its configuration
/// version's snapshot of its deployment). `Ok(Err(reason))` when a reference cannot be resolved:
/// the run must fail with that reason.
pub async fn resolve_inputs(
    state: &AppState,
    run: &Run,
) -> Result<std::result::Result<Resolved, String>> {
    let mut out = Resolved::default();
    if !run.is_deployment_run() {
        return Ok(Ok(out));
    }
    let version = state
        .store
        .get_configuration_version(&run.stack_id, run.config_version)
        .await?;
    let Some(snapshot) = version.deployment(&run.deployment) else {
        return Ok(Ok(out));
    };
    for (input, value) in &snapshot.inputs {
        let InputValue::Upstream(r) = value else {
            continue;
        };
        let current = match state
            .store
            .current_state_version(&r.stack, &r.deployment)
            .await
        {
            Ok(v) => v,
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let Some(current) = current else {
            return Ok(Err(format!(
                "input {input}: output {:?} of stack {} deployment {} does not exist (that \
                 deployment has no state yet)",
                r.output, r.stack, r.deployment
            )));
        };
        let Some((value, sensitive)) = raw_outputs(&current).remove(&r.output) else {
            return Ok(Err(format!(
                "input {input}: output {:?} of stack {} deployment {} does not exist (state \
                 serial {})",
                r.output, r.stack, r.deployment, current.serial
            )));
        };
        let text = InputValue::Literal(value).as_variable().unwrap_or_default();
        if sensitive && !text.is_empty() {
            out.secrets.push(text.clone());
        }
        out.variables.insert(input.clone(), text);
    }
    Ok(Ok(out))
}

/// Fails a run whose upstream inputs cannot be resolved, at the step it was about to start
/// (`event` moves it there first: QUEUED cannot fail directly).
pub async fn fail_unresolved(state: &AppState, run: &Run, event: RunEvent, reason: &str) {
    if let Err(e) = state
        .transition(&run.id, event, "", RunPatch::default())
        .await
    {
        tracing::info!(run.id = %run.id, error = %e, "unresolved inputs: run not started");
        return;
    }
    crate::agents::fail_run(state, &run.id, reason).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(outputs: Value) -> StateVersion {
        StateVersion {
            body:
                serde_json::json!({"version": 4, "serial": 1, "lineage": "l", "outputs": outputs})
                    .to_string()
                    .into_bytes(),
            ..Default::default()
        }
    }

    #[test]
    fn changed_outputs_cover_added_removed_changed_and_sensitive() {
        let a = version(serde_json::json!({
            "same": {"value": "x", "type": "string"},
            "changed": {"value": "1", "type": "string"},
            "gone": {"value": "g", "type": "string"},
            "secret": {"value": "s1", "type": "string", "sensitive": true},
        }));
        let b = version(serde_json::json!({
            "same": {"value": "x", "type": "string"},
            "changed": {"value": "2", "type": "string"},
            "new": {"value": [1], "type": ["list", "number"]},
            "secret": {"value": "s2", "type": "string", "sensitive": true},
        }));
        assert_eq!(
            changed_outputs(Some(&a), &b),
            ["changed", "gone", "new", "secret"]
        );
        assert_eq!(changed_outputs(Some(&b), &b), Vec::<String>::new());
        assert_eq!(
            changed_outputs(None, &a),
            ["changed", "gone", "same", "secret"]
        );
    }

    #[test]
    fn consumed_inputs_match_stack_deployment_and_output() {
        let mut inputs = std::collections::BTreeMap::new();
        let up = |stack: &str, output: &str| {
            InputValue::Upstream(cairn_core::deployment::UpstreamRef {
                stack: stack.into(),
                deployment: "default".into(),
                output: output.into(),
            })
        };
        inputs.insert("vpc".to_string(), up("net", "vpc_id"));
        inputs.insert("other".to_string(), up("dns", "vpc_id"));
        inputs.insert("zone".to_string(), up("net", "zone"));
        inputs.insert("lit".to_string(), InputValue::Literal("vpc_id".into()));
        let change = OutputsChanged {
            stack_id: "net".into(),
            deployment: "default".into(),
            serial: 3,
            outputs: vec!["vpc_id".into()],
        };
        assert_eq!(consumed(&inputs, &change), [("vpc", "vpc_id")]);
    }
}
