//! `--output json`: a hand-written mapping of the API messages to JSON.
//!
//! Field names are the proto field names; enums are their short names (`FINISHED`, `TRACKED`,
//! `PLAN`); timestamps stay Unix nanoseconds as in the API, with `0` meaning unset. Writing it out
//! by hand keeps the shape stable and reviewable instead of tied to a reflection library.

use cairn_proto::v1 as pb;
use serde_json::{json, Value};

fn enum_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix).unwrap_or(full).to_string()
}

fn parse_json_field(s: &str) -> Value {
    if s.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))
}

pub fn delta(d: Option<&pb::Delta>) -> Value {
    let d = d.copied().unwrap_or_default();
    json!({
        "added_resources": d.added_resources,
        "changed_resources": d.changed_resources,
        "deleted_resources": d.deleted_resources,
        "added_outputs": d.added_outputs,
        "changed_outputs": d.changed_outputs,
        "deleted_outputs": d.deleted_outputs,
    })
}

pub fn commit(c: Option<&pb::Commit>) -> Value {
    match c {
        None => Value::Null,
        Some(c) => json!({
            "author": c.author,
            "branch": c.branch,
            "created_at": c.created_at,
            "hash": c.hash,
            "message": c.message,
        }),
    }
}

pub fn stack(s: &pb::Stack) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "description": s.description,
        "repository": s.repository,
        "namespace": s.namespace,
        "branch": s.branch,
        "project_root": s.project_root,
        "additional_project_globs": s.additional_project_globs,
        "vendor": s.vendor,
        "labels": s.labels,
        "autodeploy": s.autodeploy,
        "administrative": s.administrative,
        "worker_pool": s.worker_pool.as_ref().map(|p| json!({
            "id": p.id, "labels": p.labels, "name": p.name, "public": p.public,
        })),
        "locked_by": s.locked_by,
        "tracked_commit": commit(s.tracked_commit.as_ref()),
        "state": s.state,
        "terraform_version": s.terraform_version,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "version": s.version,
        "vcs_integration_id": s.vcs_integration_id,
    })
}

pub fn env_var(v: &pb::EnvVar) -> Value {
    json!({ "name": v.name, "value": v.value, "secret": v.secret })
}

pub fn change(c: &pb::Change) -> Value {
    json!({
        "action": enum_name(c.action().as_str_name(), "CHANGE_ACTION_").to_lowercase(),
        "entity": c.entity.as_ref().map(|e| json!({
            "address": e.address,
            "name": e.name,
            "type": e.r#type,
            "entity_vendor": e.entity_vendor,
            "entity_type": e.entity_type,
            "data": parse_json_field(&e.data_json),
        })),
        "phase": enum_name(c.phase().as_str_name(), "CHANGE_PHASE_").to_lowercase(),
    })
}

pub fn run(r: &pb::Run) -> Value {
    json!({
        "id": r.id,
        "stack_id": r.stack_id,
        "type": enum_name(r.r#type().as_str_name(), "RUN_TYPE_"),
        "mode": enum_name(r.mode().as_str_name(), "RUN_MODE_"),
        "state": enum_name(r.state().as_str_name(), "RUN_STATE_"),
        "states_history": r.states_history.iter().map(|t| json!({
            "state": enum_name(t.state().as_str_name(), "RUN_STATE_"),
            "timestamp": t.timestamp,
            "note": t.note,
        })).collect::<Vec<_>>(),
        "triggered_by": r.triggered_by,
        "creator_session": r.creator_session.as_ref().map(|c| json!({
            "admin": c.admin, "creator_ip": c.creator_ip, "login": c.login,
            "name": c.name, "teams": c.teams, "machine": c.machine,
        })),
        "commit": commit(r.commit.as_ref()),
        "workflow_id": r.workflow_id,
        "prioritized": r.prioritized,
        "flags": r.flags,
        "delta": delta(r.delta.as_ref()),
        "changes": r.changes.iter().map(change).collect::<Vec<_>>(),
        "steps": r.steps.iter().map(|s| json!({
            "index": s.index,
            "kind": enum_name(s.kind().as_str_name(), "STEP_KIND_"),
            "state": enum_name(s.state().as_str_name(), "STEP_STATE_"),
            "started_at": s.started_at,
            "ended_at": s.ended_at,
            "delta": delta(s.delta.as_ref()),
        })).collect::<Vec<_>>(),
        "targets": r.targets,
        "deployment": r.deployment,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "version": r.version,
        "no_op": r.no_op,
        "reviews": r.reviews.iter().map(|v| json!({
            "login": v.login, "approve": v.approve, "note": v.note, "timestamp": v.timestamp,
        })).collect::<Vec<_>>(),
        "policy_denies": r.policy_denies,
        "policy_warnings": r.policy_warnings,
        "error": r.error,
    })
}

pub fn log_line(l: &pb::LogLine) -> Value {
    json!({
        "seq": l.seq,
        "timestamp": l.timestamp,
        "phase": enum_name(l.phase().as_str_name(), "PHASE_"),
        "stream": enum_name(l.stream().as_str_name(), "LOG_STREAM_"),
        "message": l.message,
    })
}

pub fn policy(p: &pb::Policy) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "type": enum_name(p.r#type().as_str_name(), "POLICY_TYPE_"),
        "body": p.body,
        "labels": p.labels,
        "version": p.version,
        "stack_ids": p.stack_ids,
        "created_at": p.created_at,
        "updated_at": p.updated_at,
    })
}

pub fn policy_sample(s: &pb::PolicySample) -> Value {
    json!({
        "id": s.id,
        "policy_id": s.policy_id,
        "policy_version": s.policy_version,
        "input": parse_json_field(&s.input_json),
        "decision": parse_json_field(&s.decision_json),
        "duration_micros": s.duration_micros,
        "created_at": s.created_at,
        "error": s.error,
    })
}

pub fn worker_pool(p: &pb::WorkerPool) -> Value {
    json!({ "id": p.id, "name": p.name, "labels": p.labels, "created_at": p.created_at })
}

pub fn worker(w: &pb::Worker) -> Value {
    json!({
        "id": w.id,
        "pool_id": w.pool_id,
        "name": w.name,
        "labels": w.labels,
        "last_heartbeat_at": w.last_heartbeat_at,
        "connected": w.connected,
        "max_jobs": w.max_jobs,
        "run_ids": w.run_ids,
    })
}

pub fn whoami(w: &pb::WhoAmIResponse) -> Value {
    json!({
        "login": w.login,
        "name": w.name,
        "teams": w.teams,
        "machine": w.machine,
        "role": enum_name(w.role().as_str_name(), "ROLE_"),
    })
}

pub fn print(v: &Value) {
    // Pretty-printed JSON of a Value cannot fail to serialize.
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_json_uses_short_enum_names_and_parses_entity_data() {
        let r = pb::Run {
            id: "0190".into(),
            state: pb::RunState::Unconfirmed as i32,
            r#type: pb::RunType::Tracked as i32,
            changes: vec![pb::Change {
                action: pb::ChangeAction::Added as i32,
                phase: pb::ChangePhase::Plan as i32,
                entity: Some(pb::Entity {
                    address: "null_resource.a".into(),
                    data_json: r#"{"k":1}"#.into(),
                    ..Default::default()
                }),
            }],
            ..Default::default()
        };
        let v = run(&r);
        assert_eq!(v["state"], "UNCONFIRMED");
        assert_eq!(v["type"], "TRACKED");
        assert_eq!(v["changes"][0]["action"], "added");
        assert_eq!(v["changes"][0]["entity"]["data"]["k"], 1);
        assert_eq!(v["delta"]["added_resources"], 0);
        assert_eq!(v["commit"], Value::Null);
    }
}
