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
//!   for a git fetch of the downstream repository. The queue is in memory; what a stopped server
//!   did not propagate is found again when the task starts: a consumed output whose current
//!   value differs from the one current when the consumer's newest configuration version was
//!   made gets that version's successor.

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
    if let Err(e) = sweep(&state).await {
        tracing::warn!(error = %e, "upstream outputs not checked at start");
    }
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

fn note(deployment: &str, input: &str, change: &OutputsChanged, output: &str) -> String {
    format!(
        "input {input} of deployment {deployment} reads output {output} of {}/{}, changed at \
         serial {}",
        change.stack_id, change.deployment, change.serial
    )
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
                notes.push(note(&d.name, input, change, output));
            }
        }
        if refresh(state, &stack, &notes).await? {
            touched.push(stack.id.clone());
        }
    }
    Ok(touched)
}

/// A new UPSTREAM configuration version of `stack` at its tracked commit, `notes` logged on its
/// runs; false when there is nothing to note or no tracked commit.
async fn refresh(state: &AppState, stack: &cairn_core::Stack, notes: &[String]) -> Result<bool> {
    if notes.is_empty() {
        return Ok(false);
    }
    let Some(commit) = stack.tracked_commit.as_ref().map(|c| c.hash.clone()) else {
        tracing::warn!(stack.id = %stack.id, "upstream outputs changed but the stack has no \
            tracked commit: no configuration version");
        return Ok(false);
    };
    let (version, runs) = crate::deployments::create_configuration_version(
        state,
        &stack.id,
        ConfigSource::Upstream,
        &commit,
    )
    .await?;
    tracing::info!(stack.id = %stack.id, config_version = version.seq, notes = ?notes,
        "configuration version for changed upstream outputs");
    for run in &runs {
        for n in notes {
            state.system_log(&run.id, n.clone()).await;
        }
    }
    Ok(true)
}

/// The version that was current at `at` among `newest_first` (a deployment's versions, newest
/// first), and whether `output` differs between it and the newest one. None when nothing was
/// written after `at`.
pub fn missed_change(
    newest_first: &[StateVersion],
    at: cairn_core::Nanos,
    output: &str,
) -> Option<i64> {
    let current = newest_first.first()?;
    if current.created_at <= at {
        return None;
    }
    let then = newest_first.iter().find(|v| v.created_at <= at);
    changed_outputs(then, current)
        .iter()
        .any(|o| o == output)
        .then_some(current.serial)
}

/// Finds consumed outputs that changed after the consumer's newest configuration version
/// (a propagation a previous process queued but did not finish) and refreshes those stacks.
pub async fn sweep(state: &AppState) -> Result<Vec<String>> {
    let mut touched = Vec::new();
    for stack in state.store.all_stacks().await? {
        let deployments = state.store.list_deployments(&stack.id).await?;
        let own = stack.id.as_str();
        let refs: Vec<_> = deployments
            .iter()
            .filter(|d| d.is_active())
            .flat_map(|d| {
                d.inputs.iter().filter_map(move |(input, v)| match v {
                    InputValue::Upstream(r) if r.stack != own => Some((d, input, r)),
                    _ => None,
                })
            })
            .collect();
        if refs.is_empty() {
            continue;
        }
        // No version yet: the first one reads every output as it is then.
        let Some(latest) = state
            .store
            .list_configuration_versions(&stack.id, 0, 1)
            .await?
            .into_iter()
            .next()
        else {
            continue;
        };
        let mut notes = Vec::new();
        for (d, input, r) in refs {
            let versions =
                versions_since(state, &r.stack, &r.deployment, latest.created_at).await?;
            if let Some(serial) = missed_change(&versions, latest.created_at, &r.output) {
                let change = OutputsChanged {
                    stack_id: r.stack.clone(),
                    deployment: r.deployment.clone(),
                    serial,
                    outputs: vec![r.output.clone()],
                };
                notes.push(note(&d.name, input, &change, &r.output));
            }
        }
        if refresh(state, &stack, &notes).await? {
            touched.push(stack.id.clone());
        }
    }
    Ok(touched)
}

/// A deployment's versions newest first, down to the first one created at or before `at`.
async fn versions_since(
    state: &AppState,
    stack_id: &str,
    deployment: &str,
    at: cairn_core::Nanos,
) -> Result<Vec<StateVersion>> {
    let mut out = Vec::new();
    let mut page = cairn_store::Page::first(100);
    loop {
        let got = state
            .store
            .list_state_versions(stack_id, deployment, &page)
            .await?;
        let reached = got.items.iter().any(|v| v.created_at <= at);
        out.extend(got.items);
        match got.next {
            Some(token) if !reached => page.token = Some(token),
            _ => return Ok(out),
        }
    }
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
    fn a_missed_change_is_found_against_the_version_current_back_then() {
        let at = |serial: i64, created_at: i64, vpc: &str| StateVersion {
            serial,
            created_at,
            ..version(serde_json::json!({
                "vpc_id": {"value": vpc, "type": "string"},
                "other": {"value": serial, "type": "number"},
            }))
        };
        let versions = [
            at(3, 300, "vpc-2"),
            at(2, 200, "vpc-1"),
            at(1, 100, "vpc-1"),
        ];
        // The consumer's version was made at 250: serial 2 was current, 3 changed vpc_id.
        assert_eq!(missed_change(&versions, 250, "vpc_id"), Some(3));
        // Made at 150 (serial 1 current): the change is there as well.
        assert_eq!(missed_change(&versions, 150, "vpc_id"), Some(3));
        // Nothing written since.
        assert_eq!(missed_change(&versions, 300, "vpc_id"), None);
        // Only `other` would matter if vpc_id had not changed.
        let same = [at(3, 300, "vpc-1"), at(2, 200, "vpc-1")];
        assert_eq!(missed_change(&same, 250, "vpc_id"), None);
        assert_eq!(missed_change(&same, 250, "other"), Some(3));
        // Made before any state existed: every output of the state is new.
        assert_eq!(missed_change(&versions, 50, "vpc_id"), Some(3));
        assert_eq!(missed_change(&[], 50, "vpc_id"), None);
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
