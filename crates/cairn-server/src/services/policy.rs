use std::sync::Arc;

use cairn_core::validate;
use cairn_policy::{CompiledPolicy, PolicyError, PolicyKind, PolicyOptions};
use cairn_proto::v1 as pb;
use cairn_proto::v1::policy_service_server::PolicyService;
use cairn_store::PolicyRecord;
use tonic::{Request, Response, Status};

use crate::error::{Result, ServerError};
use crate::policies::{evaluate, AUTOATTACH};
use crate::services::page;
use crate::state::AppState;

pub struct PolicySvc {
    pub state: Arc<AppState>,
}

const MAX_BODY: usize = 256 * 1024;
const MAX_INPUT: usize = 16 * 1024 * 1024;

fn kind_from(field: &str, t: i32) -> Result<PolicyKind> {
    match pb::PolicyType::try_from(t) {
        Ok(pb::PolicyType::Push) => Ok(PolicyKind::Push),
        Ok(pb::PolicyType::Trigger) => Ok(PolicyKind::Trigger),
        Ok(pb::PolicyType::Plan) => Ok(PolicyKind::Plan),
        Ok(pb::PolicyType::Approval) => Ok(PolicyKind::Approval),
        _ => Err(ServerError::invalid(
            field,
            "must be PUSH, TRIGGER, PLAN or APPROVAL",
        )),
    }
}

fn kind_proto(kind: &str) -> pb::PolicyType {
    match kind.parse::<PolicyKind>() {
        Ok(PolicyKind::Push) => pb::PolicyType::Push,
        Ok(PolicyKind::Trigger) => pb::PolicyType::Trigger,
        Ok(PolicyKind::Plan) => pb::PolicyType::Plan,
        Ok(PolicyKind::Approval) => pb::PolicyType::Approval,
        Err(_) => pb::PolicyType::Unspecified,
    }
}

pub fn policy_proto(p: &PolicyRecord) -> pb::Policy {
    pb::Policy {
        id: p.id.clone(),
        name: p.name.clone(),
        r#type: kind_proto(&p.kind) as i32,
        body: p.body.clone(),
        labels: p.labels.clone(),
        version: p.version,
        stack_ids: p.stack_ids.clone(),
        created_at: p.created_at,
        updated_at: p.updated_at,
    }
}

fn sample_proto(s: &cairn_store::PolicySample) -> pb::PolicySample {
    pb::PolicySample {
        id: s.id.clone(),
        policy_id: s.policy_id.clone(),
        policy_version: s.policy_version,
        input_json: s.input_json.clone(),
        decision_json: s.decision_json.clone(),
        duration_micros: s.duration_micros,
        created_at: s.created_at,
        error: s.error.clone(),
    }
}

/// Compiles a body the way evaluation will; compile errors become INVALID_ARGUMENT naming the
/// line and column so that nothing unusable is ever stored.
fn compile(field: &str, id: &str, kind: PolicyKind, body: &str) -> Result<CompiledPolicy> {
    validate::non_empty(field, body, MAX_BODY)?;
    CompiledPolicy::compile(id, 0, kind, body, PolicyOptions::default()).map_err(|e| match e {
        PolicyError::Compile {
            line,
            column,
            message,
        } => ServerError::invalid(field, format!("line {line}, column {column}: {message}")),
        PolicyError::ForbiddenBuiltin { name, line, column } => ServerError::invalid(
            field,
            format!(
                "line {line}, column {column}: builtin `{name}` is not allowed in policies (no network, runtime or clock access)"
            ),
        ),
        other => ServerError::invalid(field, other.to_string()),
    })
}

fn check_labels(labels: &[String]) -> Result<()> {
    if labels.len() > 100 {
        return Err(ServerError::invalid("policy.labels", "at most 100 labels"));
    }
    for (i, l) in labels.iter().enumerate() {
        validate::non_empty(&format!("policy.labels[{i}]"), l, 256)?;
        if l.strip_prefix(AUTOATTACH).is_some_and(str::is_empty) {
            return Err(ServerError::invalid(
                format!("policy.labels[{i}]"),
                "autoattach: needs a stack label or *",
            ));
        }
    }
    Ok(())
}

impl PolicySvc {
    async fn existing(&self, id: &str) -> Result<PolicyRecord> {
        validate::slug("policy_id", id)?;
        Ok(self.state.store.get_policy(id).await?)
    }

    async fn create(&self, p: pb::Policy) -> Result<PolicyRecord> {
        validate::slug("policy.id", &p.id)?;
        validate::non_empty("policy.name", &p.name, 256)?;
        let kind = kind_from("policy.type", p.r#type)?;
        check_labels(&p.labels)?;
        compile("policy.body", &p.id, kind, &p.body)?;
        let now = cairn_core::now_nanos();
        Ok(self
            .state
            .store
            .create_policy(PolicyRecord {
                id: p.id,
                name: p.name,
                kind: kind.as_str().to_string(),
                body: p.body,
                labels: p.labels,
                version: 1,
                stack_ids: Vec::new(),
                created_at: now,
                updated_at: now,
            })
            .await?)
    }

    async fn update(&self, p: pb::Policy) -> Result<PolicyRecord> {
        let mut stored = self.existing(&p.id).await?;
        if p.r#type != 0 && kind_from("policy.type", p.r#type)?.as_str() != stored.kind {
            return Err(ServerError::invalid(
                "policy.type",
                "a policy's type cannot change; create a new policy",
            ));
        }
        if p.version != 0 && p.version != stored.version {
            return Err(ServerError::Conflict(format!(
                "policy {} is at version {}, not {}",
                stored.id, stored.version, p.version
            )));
        }
        let kind = kind_of_record(&stored)?;
        if !p.name.is_empty() {
            validate::non_empty("policy.name", &p.name, 256)?;
            stored.name = p.name;
        }
        check_labels(&p.labels)?;
        compile("policy.body", &stored.id, kind, &p.body)?;
        stored.body = p.body;
        stored.labels = p.labels;
        stored.updated_at = cairn_core::now_nanos();
        Ok(self.state.store.update_policy(stored).await?)
    }

    async fn simulate(&self, r: pb::SimulatePolicyRequest) -> Result<pb::SimulatePolicyResponse> {
        let kind = kind_from("type", r.r#type)?;
        let compiled = compile("body", "simulation", kind, &r.body)?;
        let input: serde_json::Value = match r.input {
            Some(pb::simulate_policy_request::Input::InputJson(text)) => {
                if text.len() > MAX_INPUT {
                    return Err(ServerError::invalid("input_json", "at most 16 MiB"));
                }
                serde_json::from_str(&text)
                    .map_err(|e| ServerError::invalid("input_json", format!("not JSON: {e}")))?
            }
            Some(pb::simulate_policy_request::Input::SampleId(id)) => {
                validate::non_empty("sample_id", &id, 256)?;
                let sample = self.state.store.get_policy_sample(&id).await?;
                serde_json::from_str(&sample.input_json).map_err(|e| {
                    ServerError::precondition(format!("sample {id} has no usable input: {e}"))
                })?
            }
            None => {
                return Err(ServerError::invalid(
                    "input",
                    "give input_json or sample_id",
                ))
            }
        };
        let value = regorus::Value::from(input.clone());
        let ev = evaluate(Arc::new(compiled), value, input).await;
        let decision = ev.decision.map_err(|e| match e {
            PolicyError::Timeout { .. } => ServerError::precondition(e.to_string()),
            other => ServerError::invalid("body", other.to_string()),
        })?;
        Ok(pb::SimulatePolicyResponse {
            decision_json: crate::policies::decision_json(&decision, &[]).to_string(),
            duration_micros: ev.micros,
        })
    }
}

fn kind_of_record(p: &PolicyRecord) -> Result<PolicyKind> {
    crate::policies::kind_of(p)
}

#[tonic::async_trait]
impl PolicyService for PolicySvc {
    async fn create_policy(
        &self,
        req: Request<pb::CreatePolicyRequest>,
    ) -> Result<Response<pb::CreatePolicyResponse>, Status> {
        let p = req
            .into_inner()
            .policy
            .ok_or_else(|| ServerError::invalid("policy", "required"))?;
        let created = self.create(p).await?;
        Ok(Response::new(pb::CreatePolicyResponse {
            policy: Some(policy_proto(&created)),
        }))
    }

    async fn update_policy(
        &self,
        req: Request<pb::UpdatePolicyRequest>,
    ) -> Result<Response<pb::UpdatePolicyResponse>, Status> {
        let p = req
            .into_inner()
            .policy
            .ok_or_else(|| ServerError::invalid("policy", "required"))?;
        let updated = self.update(p).await?;
        Ok(Response::new(pb::UpdatePolicyResponse {
            policy: Some(policy_proto(&updated)),
        }))
    }

    async fn delete_policy(
        &self,
        req: Request<pb::DeletePolicyRequest>,
    ) -> Result<Response<pb::DeletePolicyResponse>, Status> {
        let id = req.into_inner().policy_id;
        validate::slug("policy_id", &id).map_err(ServerError::from)?;
        self.state
            .store
            .delete_policy(&id)
            .await
            .map_err(ServerError::from)?;
        self.state.policies.cache.remove(&id);
        Ok(Response::new(pb::DeletePolicyResponse {}))
    }

    async fn get_policy(
        &self,
        req: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        let p = self.existing(&req.into_inner().policy_id).await?;
        Ok(Response::new(pb::GetPolicyResponse {
            policy: Some(policy_proto(&p)),
        }))
    }

    async fn list_policies(
        &self,
        req: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        let r = req.into_inner();
        let page = page(r.page)?;
        let kind = match r.r#type {
            0 => None,
            t => Some(kind_from("type", t)?.as_str()),
        };
        let out = self
            .state
            .store
            .list_policies(kind, &page)
            .await
            .map_err(ServerError::from)?;
        Ok(Response::new(pb::ListPoliciesResponse {
            policies: out.items.iter().map(policy_proto).collect(),
            next_page_token: out.next.unwrap_or_default(),
        }))
    }

    async fn attach_policy(
        &self,
        req: Request<pb::AttachPolicyRequest>,
    ) -> Result<Response<pb::AttachPolicyResponse>, Status> {
        let r = req.into_inner();
        validate::slug("policy_id", &r.policy_id).map_err(ServerError::from)?;
        validate::stack_id("stack_id", &r.stack_id).map_err(ServerError::from)?;
        self.state
            .store
            .attach_policy(&r.policy_id, &r.stack_id)
            .await
            .map_err(ServerError::from)?;
        Ok(Response::new(pb::AttachPolicyResponse {}))
    }

    async fn detach_policy(
        &self,
        req: Request<pb::DetachPolicyRequest>,
    ) -> Result<Response<pb::DetachPolicyResponse>, Status> {
        let r = req.into_inner();
        validate::slug("policy_id", &r.policy_id).map_err(ServerError::from)?;
        validate::stack_id("stack_id", &r.stack_id).map_err(ServerError::from)?;
        self.state
            .store
            .detach_policy(&r.policy_id, &r.stack_id)
            .await
            .map_err(ServerError::from)?;
        Ok(Response::new(pb::DetachPolicyResponse {}))
    }

    async fn list_policy_samples(
        &self,
        req: Request<pb::ListPolicySamplesRequest>,
    ) -> Result<Response<pb::ListPolicySamplesResponse>, Status> {
        let r = req.into_inner();
        let page = page(r.page)?;
        self.existing(&r.policy_id).await?;
        let out = self
            .state
            .store
            .list_policy_samples(&r.policy_id, &page)
            .await
            .map_err(ServerError::from)?;
        Ok(Response::new(pb::ListPolicySamplesResponse {
            samples: out.items.iter().map(sample_proto).collect(),
            next_page_token: out.next.unwrap_or_default(),
        }))
    }

    async fn simulate_policy(
        &self,
        req: Request<pb::SimulatePolicyRequest>,
    ) -> Result<Response<pb::SimulatePolicyResponse>, Status> {
        Ok(Response::new(self.simulate(req.into_inner()).await?))
    }
}
