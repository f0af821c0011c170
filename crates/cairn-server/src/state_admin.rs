//! What admins and users do with managed state outside Terraform: read outputs, restore an older
//! version, force-unlock, and import an existing state under a deployment's management (import
//! mode). Every write here takes the deployment's state lock first, as Terraform does, so that it
//! never interleaves with a run's Terraform: a locked state refuses the operation.

use cairn_core::{Principal, Run, RunMode, RunType, Step, StepKind, StepState};
use cairn_store::{LockAttempt, StateLock, StateVersion, StoreError, UnlockOutcome};
use serde_json::Value;

use crate::error::{Result, ServerError};
use crate::state::AppState;
use crate::state_backend::{parse_state, redacted_outputs};

/// One root module output of a state document.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub name: String,
    /// `Value::Null` when sensitive: the value never leaves the server.
    pub value: Value,
    pub sensitive: bool,
    /// Terraform's type constraint (`"string"`, `["list","number"]`), `Null` if absent.
    pub type_json: Value,
}

/// The outputs of a state document, sorted by name, sensitive values withheld the way
/// `terraform output` shows them (`<sensitive>`: known to exist, value hidden).
pub fn outputs_of(doc: &Value) -> Vec<Output> {
    let mut out: Vec<Output> = doc
        .get("outputs")
        .and_then(Value::as_object)
        .map(|outputs| {
            outputs
                .iter()
                .map(|(name, o)| {
                    let sensitive = o.get("sensitive").and_then(Value::as_bool) == Some(true);
                    Output {
                        name: name.clone(),
                        value: if sensitive {
                            Value::Null
                        } else {
                            o.get("value").cloned().unwrap_or(Value::Null)
                        },
                        sensitive,
                        type_json: o.get("type").cloned().unwrap_or(Value::Null),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The outputs of a stored version (its document parsed; a stored version always parses, the
/// backend refused anything else).
pub fn version_outputs(v: &StateVersion) -> Vec<Output> {
    serde_json::from_slice::<Value>(&v.body)
        .map(|doc| outputs_of(&doc))
        .unwrap_or_default()
}

/// `doc` with its serial and lineage replaced, as the bytes to store.
fn renumbered(mut doc: Value, serial: i64, lineage: &str) -> Result<Vec<u8>> {
    doc["serial"] = serial.into();
    doc["lineage"] = lineage.into();
    serde_json::to_vec_pretty(&doc)
        .map_err(|e| ServerError::Internal(format!("serializing a state document: {e}")))
}

fn locked_error(stack_id: &str, deployment: &str, held: &StateLock) -> ServerError {
    let mut who = format!("run {}", held.holder_run_id);
    if !held.holder_worker_id.is_empty() {
        who.push_str(&format!(" on worker {}", held.holder_worker_id));
    }
    ServerError::precondition(format!(
        "the state of {stack_id}/{deployment} is locked by {who} (lock {}); \
         wait for it or force-unlock it",
        held.id
    ))
}

/// Runs `write` while holding the deployment's state lock (taken as `holder`); the lock is
/// released whatever `write` returns.
async fn under_lock<T>(
    state: &AppState,
    stack_id: &str,
    deployment: &str,
    holder: &str,
    operation: &str,
    who: &str,
    write: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let id = cairn_core::ids::new_id("cairnlock");
    let info = serde_json::json!({
        "ID": id, "Operation": operation, "Who": who, "Info": "",
        "Version": "", "Path": "",
        "Created": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    let lock = StateLock {
        stack_id: stack_id.to_string(),
        deployment: deployment.to_string(),
        id: id.clone(),
        holder_run_id: holder.to_string(),
        holder_worker_id: String::new(),
        info_json: info.to_string(),
        created_at: cairn_core::now_nanos(),
    };
    match state.store.acquire_state_lock(lock).await? {
        LockAttempt::Acquired(_) => {}
        LockAttempt::Held(held) => return Err(locked_error(stack_id, deployment, &held)),
    }
    let result = write.await;
    if let Err(e) = state
        .store
        .release_state_lock(stack_id, deployment, &id)
        .await
    {
        tracing::warn!(stack.id = %stack_id, deployment, lock.id = %id, error = %e,
            "state lock of an admin write not released");
    }
    result
}

/// Writes version `serial`'s document as the next version of the same lineage.
pub async fn restore_version(
    state: &AppState,
    by: &Principal,
    stack_id: &str,
    deployment: &str,
    serial: i64,
) -> Result<StateVersion> {
    let old = state
        .store
        .get_state_version(stack_id, deployment, serial)
        .await?;
    let holder = format!("restore:{}", by.login);
    under_lock(
        state,
        stack_id,
        deployment,
        &holder,
        "OperationTypeRestore",
        &by.login,
        async {
            let current = state
                .store
                .current_state_version(stack_id, deployment)
                .await?
                .ok_or_else(|| ServerError::Internal("state vanished during restore".into()))?;
            let doc: Value = serde_json::from_slice(&old.body).map_err(|e| {
                ServerError::Internal(format!("stored state {serial} is not JSON: {e}"))
            })?;
            let next = current.serial + 1;
            let body = renumbered(doc.clone(), next, &current.lineage)?;
            let version = StateVersion {
                stack_id: stack_id.to_string(),
                deployment: deployment.to_string(),
                serial: next,
                lineage: current.lineage.clone(),
                outputs_json: redacted_outputs(&doc).to_string(),
                body,
                created_at: cairn_core::now_nanos(),
                created_by_run: String::new(),
                note: format!("restored from serial {serial} by {}", by.login),
            };
            let stored = state.store.add_state_version(version).await?;
            tracing::info!(stack.id = %stack_id, deployment, from = serial, serial = next,
                by = %by.login, "state version restored");
            crate::upstream::outputs_written(state, Some(&current), &stored).await;
            Ok(stored)
        },
    )
    .await
}

/// Releases the deployment's lock `lock_id`, whoever holds it.
pub async fn force_unlock(
    state: &AppState,
    by: &Principal,
    stack_id: &str,
    deployment: &str,
    lock_id: &str,
) -> Result<StateLock> {
    match state
        .store
        .release_state_lock(stack_id, deployment, lock_id)
        .await?
    {
        UnlockOutcome::Released(lock) => {
            tracing::warn!(stack.id = %stack_id, deployment, lock.id = %lock_id,
                holder = %lock.holder_run_id, by = %by.login, "state lock force-released");
            if !lock.holder_run_id.contains(':') {
                state
                    .system_log(
                        &lock.holder_run_id,
                        format!("state lock {lock_id} force-released by {}", by.login),
                    )
                    .await;
            }
            Ok(lock)
        }
        UnlockOutcome::NotLocked => Err(ServerError::precondition(format!(
            "the state of {stack_id}/{deployment} is not locked"
        ))),
        UnlockOutcome::HeldByOther(held) => Err(ServerError::invalid(
            "lock_id",
            format!(
                "{lock_id:?} is not the held lock; {stack_id}/{deployment} is locked with {:?}",
                held.id
            ),
        )),
    }
}

/// Stores an existing Terraform state as the deployment's state and queues a TRACKED run of
/// mode IMPORT that plans against it. Its first step, IMPORT, records the import (it is done by
/// the time the run exists); the plan then shows how the real infrastructure and the
/// configuration differ from the imported state. A deployment that has state already is refused
/// unless `force` (admins only, checked by the caller): the document then becomes the next
/// version of the existing lineage, as `terraform state push -force` would.
pub async fn import_state(
    state: &AppState,
    by: &Principal,
    ip: &str,
    stack_id: &str,
    deployment: &str,
    body: &[u8],
    force: bool,
) -> Result<(StateVersion, Run)> {
    let limit = state.config.state_max_bytes;
    if body.len() as u64 > limit {
        return Err(ServerError::invalid(
            "state",
            format!(
                "{} bytes exceed the state size limit of {limit}",
                body.len()
            ),
        ));
    }
    let (doc, serial, lineage) = parse_state(body).map_err(|r| ServerError::invalid("state", r))?;
    let stack = state.store.get_stack(stack_id).await?;
    if !stack.locked_by.is_empty() && stack.locked_by != by.login {
        return Err(ServerError::precondition(format!(
            "stack {stack_id} is locked by {}",
            stack.locked_by
        )));
    }
    let (commit, config_version) = import_basis(state, &stack, deployment).await?;
    let run_id = cairn_core::ids::new_run_id();
    let holder = format!("import:{run_id}");
    let version = under_lock(
        state,
        stack_id,
        deployment,
        &holder,
        "OperationTypeImport",
        &by.login,
        async {
            let current = state
                .store
                .current_state_version(stack_id, deployment)
                .await?;
            let (serial, lineage, body) = match &current {
                None => (serial, lineage.clone(), body.to_vec()),
                Some(cur) if force => (
                    cur.serial + 1,
                    cur.lineage.clone(),
                    renumbered(doc.clone(), cur.serial + 1, &cur.lineage)?,
                ),
                Some(cur) => {
                    return Err(ServerError::precondition(format!(
                        "{stack_id}/{deployment} already has state (serial {}); an admin may \
                         replace it with force",
                        cur.serial
                    )))
                }
            };
            let version = StateVersion {
                stack_id: stack_id.to_string(),
                deployment: deployment.to_string(),
                serial,
                lineage,
                outputs_json: redacted_outputs(&doc).to_string(),
                body,
                created_at: cairn_core::now_nanos(),
                created_by_run: run_id.clone(),
                note: format!(
                    "imported by {}{}",
                    by.login,
                    if current.is_some() {
                        " (forced over the existing state)"
                    } else {
                        ""
                    }
                ),
            };
            let stored = state.store.add_state_version(version).await?;
            crate::upstream::outputs_written(state, current.as_ref(), &stored).await;
            Ok(stored)
        },
    )
    .await?;
    let now = cairn_core::now_nanos();
    let mut run = Run::new(
        run_id,
        stack.id.clone(),
        RunType::Tracked,
        commit,
        by.trigger_label(),
        by.creator_session(ip),
        now,
    );
    run.mode = RunMode::Import;
    run.deployment = deployment.to_string();
    run.config_version = config_version;
    run.steps.push(Step {
        index: 0,
        kind: StepKind::Import,
        state: StepState::Success,
        started_at: version.created_at,
        ended_at: now,
        delta: Default::default(),
    });
    let run = state.store.create_run(run).await?;
    state
        .system_log(
            &run.id,
            format!(
                "imported state serial {} (lineage {}) into {stack_id}/{deployment}; \
                 planning against it",
                version.serial, version.lineage
            ),
        )
        .await;
    tracing::info!(run.id = %run.id, stack.id = %stack_id, deployment, serial = version.serial,
        "state imported");
    crate::policies::after_run_created(state, &run).await;
    let run = state.store.get_run(&run.id).await?;
    Ok((version, run))
}

/// The commit and configuration version an IMPORT run plans with. A stack with declared
/// deployments plans the imported deployment as its deployment runs do: with the deployment's
/// newest configuration version (its commit and inputs), so the run is a deployment run of
/// that version (and is not taken for a new tracked run of the stack). Other stacks plan their
/// tracked commit.
async fn import_basis(
    state: &AppState,
    stack: &cairn_core::Stack,
    deployment: &str,
) -> Result<(cairn_core::Commit, i64)> {
    let deployments = state.store.list_deployments(&stack.id).await?;
    if deployments.is_empty() {
        let commit = stack.tracked_commit.clone().ok_or_else(|| {
            ServerError::precondition(format!(
                "stack {} has no tracked commit yet: sync it before importing",
                stack.id
            ))
        })?;
        return Ok((commit, 0));
    }
    let Some(d) = deployments
        .iter()
        .find(|d| d.name == deployment && d.is_active())
    else {
        return Err(ServerError::invalid(
            "deployment",
            format!(
                "stack {} declares no deployment {deployment:?} (it has {})",
                stack.id,
                deployments
                    .iter()
                    .filter(|d| d.is_active())
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };
    if d.last_config_version == 0 {
        return Err(ServerError::precondition(format!(
            "deployment {deployment} of stack {} has no configuration version yet: create one \
             before importing",
            stack.id
        )));
    }
    let version = state
        .store
        .get_configuration_version(&stack.id, d.last_config_version)
        .await?;
    let commit = match &stack.tracked_commit {
        Some(c) if c.hash == version.commit_sha => c.clone(),
        _ => cairn_core::Commit {
            hash: version.commit_sha.clone(),
            branch: stack.branch.clone(),
            ..Default::default()
        },
    };
    Ok((commit, version.seq))
}

/// `NotFound` for a deployment that has no state yet, named like the store names things.
pub fn no_state(stack_id: &str, deployment: &str) -> ServerError {
    ServerError::from(StoreError::not_found(
        "state",
        format!("{stack_id}/{deployment}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_sorted_with_sensitive_values_withheld() {
        let doc = serde_json::json!({"outputs": {
            "z": {"value": [1, 2], "type": ["list", "number"]},
            "a": {"value": "web", "type": "string"},
            "token": {"value": "hunter2", "type": "string", "sensitive": true},
        }});
        let out = outputs_of(&doc);
        assert_eq!(
            out.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(),
            ["a", "token", "z"]
        );
        assert_eq!(out[0].value, serde_json::json!("web"));
        assert!(out[1].sensitive);
        assert_eq!(out[1].value, Value::Null);
        assert_eq!(out[2].type_json, serde_json::json!(["list", "number"]));
    }
}
