//! StateService: managed Terraform state over gRPC. State documents carry secrets (resource
//! attributes, sensitive outputs), so only admins receive them; outputs are shown with
//! sensitive values withheld, as `terraform output` does.

use std::sync::Arc;

use cairn_core::{validate, Role};
use cairn_proto::v1 as pb;
use cairn_proto::v1::state_service_server::StateService;
use cairn_store::{StateLock, StateVersion};
use serde_json::Value;
use tonic::{Request, Response, Status};

use crate::auth::{caller, Caller};
use crate::convert;
use crate::error::{Result, ServerError};
use crate::services::page;
use crate::state::AppState;
use crate::state_admin::{self, Output};

pub struct StateSvc {
    pub state: Arc<AppState>,
}

/// The stack id and deployment name of a request (an empty deployment is `default`).
fn target(stack_id: &str, deployment: &str) -> Result<(String, String)> {
    validate::stack_id("stack_id", stack_id)?;
    let deployment = if deployment.is_empty() {
        cairn_core::DEFAULT_DEPLOYMENT.to_string()
    } else {
        validate::slug("deployment", deployment)?;
        deployment.to_string()
    };
    Ok((stack_id.to_string(), deployment))
}

fn require_admin(c: &Caller, what: &str) -> Result<()> {
    if c.principal.role < Role::Admin {
        return Err(ServerError::PermissionDenied(format!(
            "{what} needs the admin role"
        )));
    }
    Ok(())
}

fn output(o: &Output) -> pb::StateOutput {
    pb::StateOutput {
        name: o.name.clone(),
        value_json: if o.sensitive {
            String::new()
        } else {
            o.value.to_string()
        },
        sensitive: o.sensitive,
        type_json: if o.type_json.is_null() {
            String::new()
        } else {
            o.type_json.to_string()
        },
    }
}

fn version(v: &StateVersion) -> pb::StateVersion {
    pb::StateVersion {
        stack_id: v.stack_id.clone(),
        deployment: v.deployment.clone(),
        serial: v.serial,
        lineage: v.lineage.clone(),
        created_at: v.created_at,
        created_by_run: v.created_by_run.clone(),
        note: v.note.clone(),
        size_bytes: i64::try_from(v.body.len()).unwrap_or(i64::MAX),
        outputs: state_admin::version_outputs(v).iter().map(output).collect(),
    }
}

fn lock(l: &StateLock) -> pb::StateLock {
    let info: Value = serde_json::from_str(&l.info_json).unwrap_or(Value::Null);
    let field = |k: &str| {
        info.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    pb::StateLock {
        stack_id: l.stack_id.clone(),
        deployment: l.deployment.clone(),
        id: l.id.clone(),
        holder_run_id: l.holder_run_id.clone(),
        holder_worker_id: l.holder_worker_id.clone(),
        who: field("Who"),
        operation: field("Operation"),
        info_json: l.info_json.clone(),
        created_at: l.created_at,
    }
}

#[tonic::async_trait]
impl StateService for StateSvc {
    async fn list_state_versions(
        &self,
        req: Request<pb::ListStateVersionsRequest>,
    ) -> Result<Response<pb::ListStateVersionsResponse>, Status> {
        let r = req.into_inner();
        let (stack_id, deployment) = target(&r.stack_id, &r.deployment)?;
        let page = page(r.page)?;
        // The stack must exist: an unknown stack is NOT_FOUND, not an empty list.
        self.state
            .store
            .get_stack(&stack_id)
            .await
            .map_err(ServerError::from)?;
        let out = self
            .state
            .store
            .list_state_versions(&stack_id, &deployment, &page)
            .await
            .map_err(ServerError::from)?;
        Ok(Response::new(pb::ListStateVersionsResponse {
            versions: out.items.iter().map(version).collect(),
            next_page_token: out.next.unwrap_or_default(),
        }))
    }

    async fn get_state_version(
        &self,
        req: Request<pb::GetStateVersionRequest>,
    ) -> Result<Response<pb::GetStateVersionResponse>, Status> {
        let admin = caller(&req)?.principal.role >= Role::Admin;
        let r = req.into_inner();
        let (stack_id, deployment) = target(&r.stack_id, &r.deployment)?;
        let v = match r.serial {
            Some(serial) => self
                .state
                .store
                .get_state_version(&stack_id, &deployment, serial)
                .await
                .map_err(ServerError::from)?,
            None => self
                .state
                .store
                .current_state_version(&stack_id, &deployment)
                .await
                .map_err(ServerError::from)?
                .ok_or_else(|| state_admin::no_state(&stack_id, &deployment))?,
        };
        Ok(Response::new(pb::GetStateVersionResponse {
            version: Some(version(&v)),
            state: if admin { v.body } else { Vec::new() },
            state_withheld: !admin,
        }))
    }

    async fn get_outputs(
        &self,
        req: Request<pb::GetOutputsRequest>,
    ) -> Result<Response<pb::GetOutputsResponse>, Status> {
        let r = req.into_inner();
        let (stack_id, deployment) = target(&r.stack_id, &r.deployment)?;
        let v = self
            .state
            .store
            .current_state_version(&stack_id, &deployment)
            .await
            .map_err(ServerError::from)?
            .ok_or_else(|| state_admin::no_state(&stack_id, &deployment))?;
        Ok(Response::new(pb::GetOutputsResponse {
            serial: v.serial,
            outputs: state_admin::version_outputs(&v)
                .iter()
                .map(output)
                .collect(),
        }))
    }

    async fn restore_state_version(
        &self,
        req: Request<pb::RestoreStateVersionRequest>,
    ) -> Result<Response<pb::RestoreStateVersionResponse>, Status> {
        let c = caller(&req)?.clone();
        let r = req.into_inner();
        let (stack_id, deployment) = target(&r.stack_id, &r.deployment)?;
        let v = state_admin::restore_version(
            &self.state,
            &c.principal,
            &stack_id,
            &deployment,
            r.serial,
        )
        .await?;
        Ok(Response::new(pb::RestoreStateVersionResponse {
            version: Some(version(&v)),
        }))
    }

    async fn get_state_lock(
        &self,
        req: Request<pb::GetStateLockRequest>,
    ) -> Result<Response<pb::GetStateLockResponse>, Status> {
        let r = req.into_inner();
        let (stack_id, deployment) = target(&r.stack_id, &r.deployment)?;
        let held = self
            .state
            .store
            .get_state_lock(&stack_id, &deployment)
            .await
            .map_err(ServerError::from)?;
        Ok(Response::new(pb::GetStateLockResponse {
            lock: held.as_ref().map(lock),
        }))
    }

    async fn force_unlock(
        &self,
        req: Request<pb::ForceUnlockRequest>,
    ) -> Result<Response<pb::ForceUnlockResponse>, Status> {
        let c = caller(&req)?.clone();
        let r = req.into_inner();
        let (stack_id, deployment) = target(&r.stack_id, &r.deployment)?;
        validate::non_empty("lock_id", &r.lock_id, 256).map_err(ServerError::from)?;
        let released = state_admin::force_unlock(
            &self.state,
            &c.principal,
            &stack_id,
            &deployment,
            &r.lock_id,
        )
        .await?;
        Ok(Response::new(pb::ForceUnlockResponse {
            lock: Some(lock(&released)),
        }))
    }

    async fn import_state(
        &self,
        req: Request<pb::ImportStateRequest>,
    ) -> Result<Response<pb::ImportStateResponse>, Status> {
        let c = caller(&req)?.clone();
        let r = req.into_inner();
        let (stack_id, deployment) = target(&r.stack_id, &r.deployment)?;
        if r.force {
            require_admin(&c, "replacing existing state (force)")?;
        }
        if r.state.is_empty() {
            return Err(ServerError::invalid("state", "empty: give a state document").into());
        }
        let (v, run) = state_admin::import_state(
            &self.state,
            &c.principal,
            &c.ip,
            &stack_id,
            &deployment,
            &r.state,
            r.force,
        )
        .await?;
        Ok(Response::new(pb::ImportStateResponse {
            version: Some(version(&v)),
            run: Some(convert::run(&run)),
        }))
    }
}
