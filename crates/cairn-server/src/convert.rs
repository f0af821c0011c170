//! Protobuf ↔ core translations. Services call these and nothing else touches both worlds.

use cairn_core as core;
use cairn_proto::v1 as pb;

use crate::error::{Result, ServerError};

pub fn run_state(s: core::RunState) -> pb::RunState {
    use core::RunState as C;
    use pb::RunState as P;
    match s {
        C::Queued => P::Queued,
        C::Preparing => P::Preparing,
        C::Initializing => P::Initializing,
        C::Planning => P::Planning,
        C::PendingReview => P::PendingReview,
        C::Unconfirmed => P::Unconfirmed,
        C::Confirmed => P::Confirmed,
        C::Discarded => P::Discarded,
        C::PreparingApply => P::PreparingApply,
        C::Applying => P::Applying,
        C::ReplanRequested => P::ReplanRequested,
        C::Finished => P::Finished,
        C::Failed => P::Failed,
        C::Canceled => P::Canceled,
        C::Stopped => P::Stopped,
    }
}

pub fn run_type(t: core::RunType) -> pb::RunType {
    match t {
        core::RunType::Proposed => pb::RunType::Proposed,
        core::RunType::Tracked => pb::RunType::Tracked,
        core::RunType::Task => pb::RunType::Task,
        core::RunType::DriftDetection => pb::RunType::DriftDetection,
    }
}

pub fn run_mode(m: core::RunMode) -> pb::RunMode {
    match m {
        core::RunMode::Normal => pb::RunMode::Normal,
        core::RunMode::Destroy => pb::RunMode::Destroy,
        core::RunMode::Import => pb::RunMode::Import,
    }
}

pub fn run_mode_from(field: &str, m: i32) -> Result<core::RunMode> {
    match pb::RunMode::try_from(m) {
        Ok(pb::RunMode::Unspecified | pb::RunMode::Normal) => Ok(core::RunMode::Normal),
        Ok(pb::RunMode::Destroy) => Ok(core::RunMode::Destroy),
        Ok(pb::RunMode::Import) => Ok(core::RunMode::Import),
        Err(_) => Err(ServerError::invalid(field, format!("unknown run mode {m}"))),
    }
}

pub fn commit(c: &core::Commit) -> pb::Commit {
    pb::Commit {
        author: c.author.clone(),
        branch: c.branch.clone(),
        created_at: c.created_at,
        hash: c.hash.clone(),
        message: c.message.clone(),
    }
}

pub fn commit_from(c: pb::Commit) -> core::Commit {
    core::Commit {
        author: c.author,
        branch: c.branch,
        created_at: c.created_at,
        hash: c.hash,
        message: c.message,
    }
}

pub fn delta(d: &core::Delta) -> pb::Delta {
    pb::Delta {
        added_resources: d.added_resources,
        changed_resources: d.changed_resources,
        deleted_resources: d.deleted_resources,
        added_outputs: d.added_outputs,
        changed_outputs: d.changed_outputs,
        deleted_outputs: d.deleted_outputs,
    }
}

pub fn delta_from(d: pb::Delta) -> core::Delta {
    core::Delta {
        added_resources: d.added_resources,
        changed_resources: d.changed_resources,
        deleted_resources: d.deleted_resources,
        added_outputs: d.added_outputs,
        changed_outputs: d.changed_outputs,
        deleted_outputs: d.deleted_outputs,
    }
}

pub fn change(c: &core::Change) -> pb::Change {
    pb::Change {
        action: match c.action {
            core::ChangeAction::Added => pb::ChangeAction::Added,
            core::ChangeAction::Changed => pb::ChangeAction::Changed,
            core::ChangeAction::Deleted => pb::ChangeAction::Deleted,
        } as i32,
        entity: Some(pb::Entity {
            address: c.entity.address.clone(),
            name: c.entity.name.clone(),
            r#type: c.entity.r#type.clone(),
            entity_vendor: c.entity.entity_vendor.clone(),
            entity_type: c.entity.entity_type.clone(),
            data_json: if c.entity.data.is_null() {
                String::new()
            } else {
                c.entity.data.to_string()
            },
        }),
        phase: match c.phase {
            core::ChangePhase::Plan => pb::ChangePhase::Plan,
            core::ChangePhase::Apply => pb::ChangePhase::Apply,
        } as i32,
    }
}

/// Changes reported by an agent; `field` prefixes error names (`plan_result.changes[3]…`).
pub fn change_from(field: &str, c: pb::Change) -> Result<core::Change> {
    let action = match pb::ChangeAction::try_from(c.action) {
        Ok(pb::ChangeAction::Added) => core::ChangeAction::Added,
        Ok(pb::ChangeAction::Changed) => core::ChangeAction::Changed,
        Ok(pb::ChangeAction::Deleted) => core::ChangeAction::Deleted,
        _ => {
            return Err(ServerError::invalid(
                format!("{field}.action"),
                "must be ADDED, CHANGED or DELETED",
            ))
        }
    };
    let phase = match pb::ChangePhase::try_from(c.phase) {
        Ok(pb::ChangePhase::Apply) => core::ChangePhase::Apply,
        _ => core::ChangePhase::Plan,
    };
    let e = c.entity.unwrap_or_default();
    let data = if e.data_json.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&e.data_json).map_err(|err| {
            ServerError::invalid(format!("{field}.entity.data_json"), err.to_string())
        })?
    };
    Ok(core::Change {
        action,
        entity: core::Entity {
            address: e.address,
            name: e.name,
            r#type: e.r#type,
            entity_vendor: e.entity_vendor,
            entity_type: e.entity_type,
            data,
        },
        phase,
    })
}

pub fn phase(p: core::Phase) -> pb::Phase {
    match p {
        core::Phase::Preparing => pb::Phase::Preparing,
        core::Phase::Initializing => pb::Phase::Initializing,
        core::Phase::Planning => pb::Phase::Planning,
        core::Phase::Applying => pb::Phase::Applying,
    }
}

pub fn phase_from(p: i32) -> Option<core::Phase> {
    match pb::Phase::try_from(p) {
        Ok(pb::Phase::Preparing) => Some(core::Phase::Preparing),
        Ok(pb::Phase::Initializing) => Some(core::Phase::Initializing),
        Ok(pb::Phase::Planning) => Some(core::Phase::Planning),
        Ok(pb::Phase::Applying) => Some(core::Phase::Applying),
        _ => None,
    }
}

pub fn log_line(l: &core::LogLine) -> pb::LogLine {
    pb::LogLine {
        seq: l.seq,
        timestamp: l.timestamp,
        phase: l.phase.map(phase).unwrap_or(pb::Phase::Unspecified) as i32,
        stream: match l.stream {
            core::LogStream::Stdout => pb::LogStream::Stdout,
            core::LogStream::Stderr => pb::LogStream::Stderr,
            core::LogStream::System => pb::LogStream::System,
        } as i32,
        message: l.message.clone(),
    }
}

pub fn log_stream_from(s: i32) -> core::LogStream {
    match pb::LogStream::try_from(s) {
        Ok(pb::LogStream::Stderr) => core::LogStream::Stderr,
        Ok(pb::LogStream::System) => core::LogStream::System,
        _ => core::LogStream::Stdout,
    }
}

fn step(s: &core::Step) -> pb::Step {
    pb::Step {
        index: s.index,
        kind: match s.kind {
            core::StepKind::Plan => pb::StepKind::Plan,
            core::StepKind::Apply => pb::StepKind::Apply,
            core::StepKind::Import => pb::StepKind::Import,
        } as i32,
        state: match s.state {
            core::StepState::Pending => pb::StepState::Pending,
            core::StepState::Running => pb::StepState::Running,
            core::StepState::Waiting => pb::StepState::Waiting,
            core::StepState::Success => pb::StepState::Success,
            core::StepState::Failed => pb::StepState::Failed,
            core::StepState::Cancelled => pb::StepState::Cancelled,
        } as i32,
        started_at: s.started_at,
        ended_at: s.ended_at,
        delta: Some(delta(&s.delta)),
    }
}

pub fn run(r: &core::Run) -> pb::Run {
    let cs = &r.creator_session;
    pb::Run {
        id: r.id.clone(),
        stack_id: r.stack_id.clone(),
        r#type: run_type(r.run_type) as i32,
        mode: run_mode(r.mode) as i32,
        state: run_state(r.state) as i32,
        states_history: r
            .states_history
            .iter()
            .map(|t| pb::StateTransition {
                state: run_state(t.state) as i32,
                timestamp: t.timestamp,
                note: t.note.clone(),
            })
            .collect(),
        triggered_by: r.triggered_by.clone(),
        creator_session: Some(pb::CreatorSession {
            admin: cs.admin,
            creator_ip: cs.creator_ip.clone(),
            login: cs.login.clone(),
            name: cs.name.clone(),
            teams: cs.teams.clone(),
            machine: cs.machine,
        }),
        commit: Some(commit(&r.commit)),
        workflow_id: r.workflow_id.clone(),
        prioritized: r.prioritized,
        flags: r.flags.clone(),
        delta: Some(delta(&r.delta)),
        changes: r.changes.iter().map(change).collect(),
        steps: r.steps.iter().map(step).collect(),
        targets: r.targets.clone(),
        deployment: r.deployment.clone(),
        created_at: r.created_at,
        updated_at: r.updated_at,
        version: r.version,
        no_op: r.no_op,
        reviews: r
            .reviews
            .iter()
            .map(|v| pb::Review {
                login: v.login.clone(),
                approve: v.approve,
                note: v.note.clone(),
                timestamp: v.timestamp,
            })
            .collect(),
        policy_denies: r.policy_denies.clone(),
        policy_warnings: r.policy_warnings.clone(),
        error: r.error.clone(),
        config_version: r.config_version,
        cycle: r.cycle,
        approved_at: r.approved_at,
    }
}

pub fn stack(s: &core::Stack) -> pb::Stack {
    pb::Stack {
        id: s.id.clone(),
        name: s.name.clone(),
        description: s.description.clone(),
        repository: s.repository.clone(),
        namespace: s.namespace.clone(),
        branch: s.branch.clone(),
        project_root: s.project_root.clone(),
        additional_project_globs: s.additional_project_globs.clone(),
        vendor: s.vendor.clone(),
        labels: s.labels.clone(),
        autodeploy: s.autodeploy,
        administrative: s.administrative,
        worker_pool: Some(pb::WorkerPoolRef {
            id: effective_pool(s).to_string(),
            labels: Vec::new(),
            name: effective_pool(s).to_string(),
            public: s.worker_pool_id.is_empty(),
        }),
        locked_by: s.locked_by.clone(),
        tracked_commit: s.tracked_commit.as_ref().map(commit),
        state: if s.state.is_empty() {
            "NONE".into()
        } else {
            s.state.clone()
        },
        terraform_version: s.terraform_version.clone(),
        created_at: s.created_at,
        updated_at: s.updated_at,
        version: s.version,
        vcs_integration_id: s.vcs_integration_id.clone(),
    }
}

/// The pool a stack's runs go to.
pub fn effective_pool(s: &core::Stack) -> &str {
    if s.worker_pool_id.is_empty() {
        core::DEFAULT_POOL
    } else {
        &s.worker_pool_id
    }
}

/// The user-settable fields of a stack; server-owned fields keep their defaults.
pub fn stack_from(s: pb::Stack) -> core::Stack {
    core::Stack {
        id: s.id,
        name: s.name,
        description: s.description,
        repository: s.repository,
        namespace: s.namespace,
        branch: s.branch,
        project_root: s.project_root,
        additional_project_globs: s.additional_project_globs,
        vendor: s.vendor,
        labels: s.labels,
        autodeploy: s.autodeploy,
        administrative: s.administrative,
        worker_pool_id: s
            .worker_pool
            .map(|p| p.id)
            .filter(|id| id != core::DEFAULT_POOL)
            .unwrap_or_default(),
        terraform_version: s.terraform_version,
        vcs_integration_id: s.vcs_integration_id,
        version: s.version,
        ..Default::default()
    }
}

pub fn env_var(v: &core::EnvVar) -> pb::EnvVar {
    let r = v.redacted();
    pb::EnvVar {
        name: r.name,
        value: r.value,
        secret: r.secret,
    }
}

pub fn env_var_from(v: pb::EnvVar) -> core::EnvVar {
    core::EnvVar {
        name: v.name,
        value: v.value,
        secret: v.secret,
    }
}

pub fn role(r: core::Role) -> pb::Role {
    match r {
        core::Role::Reader => pb::Role::Reader,
        core::Role::Writer => pb::Role::Writer,
        core::Role::Admin => pb::Role::Admin,
    }
}

pub fn role_from(field: &str, r: i32) -> Result<core::Role> {
    match pb::Role::try_from(r) {
        Ok(pb::Role::Reader) => Ok(core::Role::Reader),
        Ok(pb::Role::Writer) => Ok(core::Role::Writer),
        Ok(pb::Role::Admin) => Ok(core::Role::Admin),
        _ => Err(ServerError::invalid(
            field,
            "must be READER, WRITER or ADMIN",
        )),
    }
}

pub fn api_key(k: &core::ApiKey) -> pb::ApiKey {
    pb::ApiKey {
        id: k.id.clone(),
        login: k.login.clone(),
        name: k.name.clone(),
        teams: k.teams.clone(),
        machine: k.machine,
        role: role(k.role) as i32,
        created_at: k.created_at,
        revoked: k.revoked,
    }
}

pub fn worker_pool(p: &core::WorkerPool) -> pb::WorkerPool {
    pb::WorkerPool {
        id: p.id.clone(),
        name: p.name.clone(),
        labels: p.labels.clone(),
        created_at: p.created_at,
    }
}
