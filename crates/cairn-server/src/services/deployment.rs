//! DeploymentService: deployments of a stack and its configuration versions. Validation and
//! proto ↔ core translation here; versions and runs come from [`crate::deployments`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cairn_core::deployment::{deployment_name, validate_inputs};
use cairn_core::{ConfigSource, ConfigurationVersion, Deployment, InputValue, Run};
use cairn_proto::v1 as pb;
use cairn_proto::v1::deployment_service_server::DeploymentService;
use cairn_store::{Page, StoreError};
use tonic::{Request, Response, Status};

use crate::deployments;
use crate::error::{Result, ServerError};
use crate::services::commit_sha;
use crate::state::AppState;

pub struct DeploymentSvc {
    pub state: Arc<AppState>,
}

/// Proto inputs (name → JSON text) as core inputs; errors name `inputs.<name>`.
fn inputs_from(inputs: HashMap<String, String>) -> Result<BTreeMap<String, InputValue>> {
    if inputs.len() > 256 {
        return Err(ServerError::invalid("inputs", "at most 256 inputs"));
    }
    let mut out = BTreeMap::new();
    for (k, v) in inputs {
        let field = format!("inputs.{k}");
        if v.len() > 64 * 1024 {
            return Err(ServerError::invalid(field, "too long: at most 65536 bytes"));
        }
        let value: InputValue = serde_json::from_str(&v).map_err(|e| {
            ServerError::invalid(
                field,
                format!("not JSON ({e}); a string input is written with quotes, e.g. \"eu\""),
            )
        })?;
        out.insert(k, value);
    }
    validate_inputs("inputs", &out)?;
    Ok(out)
}

fn inputs_to(inputs: &BTreeMap<String, InputValue>) -> HashMap<String, String> {
    inputs
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::to_string(v).unwrap_or_default()))
        .collect()
}

fn deployment_to(d: &Deployment) -> pb::Deployment {
    pb::Deployment {
        stack_id: d.stack_id.clone(),
        name: d.name.clone(),
        inputs: inputs_to(&d.inputs),
        destroy: d.destroy,
        auto_approve: d.auto_approve,
        declared_in: d.declared_in.clone(),
        deleted: d.deleted,
        removed: d.removed,
        last_config_version: d.last_config_version,
        lock_holder: d.lock_holder.clone(),
        created_at: d.created_at,
        updated_at: d.updated_at,
    }
}

fn source_to(s: ConfigSource) -> pb::ConfigSource {
    match s {
        ConfigSource::Vcs => pb::ConfigSource::Vcs,
        ConfigSource::Manual => pb::ConfigSource::Manual,
        ConfigSource::Upload => pb::ConfigSource::Upload,
        ConfigSource::Inputs => pb::ConfigSource::Inputs,
        ConfigSource::Upstream => pb::ConfigSource::Upstream,
    }
}

pub fn version_to(v: &ConfigurationVersion) -> pb::ConfigurationVersion {
    pb::ConfigurationVersion {
        id: v.id.clone(),
        stack_id: v.stack_id.clone(),
        seq: v.seq,
        commit_sha: v.commit_sha.clone(),
        content_digest: v.content_digest.clone(),
        deployments: v
            .deployments
            .iter()
            .map(|d| pb::DeploymentSnapshot {
                name: d.name.clone(),
                inputs: inputs_to(&d.inputs),
                destroy: d.destroy,
                auto_approve: d.auto_approve,
            })
            .collect(),
        source: source_to(v.source) as i32,
        created_at: v.created_at,
    }
}

fn run_ids(runs: &[Run]) -> Vec<String> {
    runs.iter().map(|r| r.id.clone()).collect()
}

impl DeploymentSvc {
    async fn stack(&self, id: &str) -> Result<cairn_core::Stack> {
        cairn_core::validate::stack_id("stack_id", id)?;
        Ok(self.state.store.get_stack(id).await?)
    }

    async fn existing(&self, stack_id: &str, name: &str) -> Result<Deployment> {
        self.stack(stack_id).await?;
        deployment_name("name", name)?;
        Ok(self.state.store.get_deployment(stack_id, name).await?)
    }

    /// A new configuration version at the tracked commit, when the stack has one.
    async fn new_version(
        &self,
        stack: &cairn_core::Stack,
    ) -> Result<Option<(ConfigurationVersion, Vec<Run>)>> {
        let Some(commit) = &stack.tracked_commit else {
            return Ok(None);
        };
        deployments::create_configuration_version(
            &self.state,
            &stack.id,
            ConfigSource::Inputs,
            &commit.hash,
        )
        .await
        .map(Some)
    }

    async fn create(&self, r: pb::CreateDeploymentRequest) -> Result<Deployment> {
        self.stack(&r.stack_id).await?;
        deployment_name("name", &r.name)?;
        let mut d = Deployment::new(&r.stack_id, &r.name, cairn_core::now_nanos());
        d.inputs = inputs_from(r.inputs)?;
        d.destroy = r.destroy;
        d.auto_approve = r.auto_approve;
        match self.state.store.create_deployment(d).await {
            Err(StoreError::AlreadyExists { .. }) => Err(ServerError::AlreadyExists {
                kind: "deployment",
                id: format!(
                    "{}/{} (the name collides with an existing deployment)",
                    r.stack_id, r.name
                ),
            }),
            other => Ok(other?),
        }
    }

    async fn update(
        &self,
        r: pb::UpdateDeploymentRequest,
    ) -> Result<(Deployment, Option<(ConfigurationVersion, Vec<Run>)>)> {
        let mut d = self.existing(&r.stack_id, &r.name).await?;
        if d.declared_in == "file" {
            return Err(ServerError::precondition(format!(
                "deployment {} is declared in cairn.toml: change it there",
                d.name
            )));
        }
        if !d.is_active() {
            return Err(ServerError::precondition(format!(
                "deployment {} was removed",
                d.name
            )));
        }
        let all = r.update_mask.is_empty();
        for (i, f) in r.update_mask.iter().enumerate() {
            if !["inputs", "destroy", "auto_approve"].contains(&f.as_str()) {
                return Err(ServerError::invalid(
                    format!("update_mask[{i}]"),
                    format!("{f:?} is not one of inputs, destroy, auto_approve"),
                ));
            }
        }
        let has = |f: &str| all || r.update_mask.iter().any(|m| m == f);
        let before = d.clone();
        if has("inputs") {
            d.inputs = inputs_from(r.inputs)?;
        }
        if has("destroy") {
            d.destroy = r.destroy;
        }
        if has("auto_approve") {
            d.auto_approve = r.auto_approve;
        }
        if d == before {
            return Ok((d, None));
        }
        d.updated_at = cairn_core::now_nanos();
        let d = self.state.store.update_deployment(d).await?;
        // What runs plan changed: that is a new configuration version.
        let changed = d.inputs != before.inputs || d.destroy != before.destroy;
        let created = if changed {
            let stack = self.stack(&r.stack_id).await?;
            self.new_version(&stack).await?
        } else {
            None
        };
        let d = self
            .state
            .store
            .get_deployment(&d.stack_id, &d.name)
            .await?;
        Ok((d, created))
    }

    async fn delete(
        &self,
        r: pb::DeleteDeploymentRequest,
    ) -> Result<(Deployment, Option<(ConfigurationVersion, Vec<Run>)>)> {
        let mut d = self.existing(&r.stack_id, &r.name).await?;
        if d.declared_in == "file" {
            return Err(ServerError::precondition(format!(
                "deployment {} is declared in cairn.toml: remove it there",
                d.name
            )));
        }
        if !d.is_active() {
            return Ok((d, None));
        }
        d.deleted = true;
        d.updated_at = cairn_core::now_nanos();
        if d.last_config_version == 0 {
            // Never part of a configuration version: nothing to destroy.
            d.removed = true;
        }
        let d = self.state.store.update_deployment(d).await?;
        let created = if d.removed {
            None
        } else {
            let stack = self.stack(&r.stack_id).await?;
            self.new_version(&stack).await?
        };
        let d = self
            .state
            .store
            .get_deployment(&d.stack_id, &d.name)
            .await?;
        Ok((d, created))
    }

    async fn create_version(
        &self,
        r: pb::CreateConfigurationVersionRequest,
    ) -> Result<(ConfigurationVersion, Vec<Run>)> {
        let stack = self.stack(&r.stack_id).await?;
        if !r.archive.is_empty() {
            if !r.commit_sha.is_empty() {
                return Err(ServerError::invalid(
                    "commit_sha",
                    "must be empty when an archive is uploaded",
                ));
            }
            return deployments::create_uploaded_version(&self.state, &stack.id, r.archive).await;
        }
        let sha = if r.commit_sha.is_empty() {
            stack
                .tracked_commit
                .as_ref()
                .map(|c| c.hash.clone())
                .ok_or_else(|| {
                    ServerError::precondition(format!(
                        "stack {} has no tracked commit yet: sync it or give commit_sha",
                        stack.id
                    ))
                })?
        } else {
            commit_sha("commit_sha", &r.commit_sha)?;
            r.commit_sha
        };
        deployments::create_configuration_version(
            &self.state,
            &stack.id,
            ConfigSource::Manual,
            &sha,
        )
        .await
    }

    async fn list_versions(
        &self,
        r: pb::ListConfigurationVersionsRequest,
    ) -> Result<(Vec<ConfigurationVersion>, String)> {
        self.stack(&r.stack_id).await?;
        let page = Page {
            size: r.page_size,
            token: None,
        };
        let limit = page.limit();
        let before = if r.page_token.is_empty() {
            0
        } else {
            r.page_token
                .parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| ServerError::invalid("page_token", "not a token this API gave"))?
        };
        let items = self
            .state
            .store
            .list_configuration_versions(&r.stack_id, before, limit)
            .await?;
        let next = match items.last() {
            Some(v) if items.len() == limit as usize && v.seq > 1 => v.seq.to_string(),
            _ => String::new(),
        };
        Ok((items, next))
    }
}

#[tonic::async_trait]
impl DeploymentService for DeploymentSvc {
    async fn create_deployment(
        &self,
        req: Request<pb::CreateDeploymentRequest>,
    ) -> Result<Response<pb::CreateDeploymentResponse>, Status> {
        let d = self.create(req.into_inner()).await?;
        Ok(Response::new(pb::CreateDeploymentResponse {
            deployment: Some(deployment_to(&d)),
        }))
    }

    async fn update_deployment(
        &self,
        req: Request<pb::UpdateDeploymentRequest>,
    ) -> Result<Response<pb::UpdateDeploymentResponse>, Status> {
        let (d, created) = self.update(req.into_inner()).await?;
        Ok(Response::new(pb::UpdateDeploymentResponse {
            deployment: Some(deployment_to(&d)),
            configuration_version: created.as_ref().map(|(v, _)| version_to(v)),
            run_ids: created.map(|(_, r)| run_ids(&r)).unwrap_or_default(),
        }))
    }

    async fn delete_deployment(
        &self,
        req: Request<pb::DeleteDeploymentRequest>,
    ) -> Result<Response<pb::DeleteDeploymentResponse>, Status> {
        let (d, created) = self.delete(req.into_inner()).await?;
        Ok(Response::new(pb::DeleteDeploymentResponse {
            deployment: Some(deployment_to(&d)),
            configuration_version: created.as_ref().map(|(v, _)| version_to(v)),
            run_ids: created.map(|(_, r)| run_ids(&r)).unwrap_or_default(),
        }))
    }

    async fn get_deployment(
        &self,
        req: Request<pb::GetDeploymentRequest>,
    ) -> Result<Response<pb::GetDeploymentResponse>, Status> {
        let r = req.into_inner();
        let d = self.existing(&r.stack_id, &r.name).await?;
        Ok(Response::new(pb::GetDeploymentResponse {
            deployment: Some(deployment_to(&d)),
        }))
    }

    async fn list_deployments(
        &self,
        req: Request<pb::ListDeploymentsRequest>,
    ) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
        let r = req.into_inner();
        self.stack(&r.stack_id).await?;
        let list = self
            .state
            .store
            .list_deployments(&r.stack_id)
            .await
            .map_err(ServerError::from)?;
        Ok(Response::new(pb::ListDeploymentsResponse {
            deployments: list.iter().map(deployment_to).collect(),
        }))
    }

    async fn create_configuration_version(
        &self,
        req: Request<pb::CreateConfigurationVersionRequest>,
    ) -> Result<Response<pb::CreateConfigurationVersionResponse>, Status> {
        let (v, runs) = self.create_version(req.into_inner()).await?;
        Ok(Response::new(pb::CreateConfigurationVersionResponse {
            configuration_version: Some(version_to(&v)),
            run_ids: run_ids(&runs),
        }))
    }

    async fn list_configuration_versions(
        &self,
        req: Request<pb::ListConfigurationVersionsRequest>,
    ) -> Result<Response<pb::ListConfigurationVersionsResponse>, Status> {
        let (items, next) = self.list_versions(req.into_inner()).await?;
        Ok(Response::new(pb::ListConfigurationVersionsResponse {
            configuration_versions: items.iter().map(version_to).collect(),
            next_page_token: next,
        }))
    }

    async fn get_configuration_version(
        &self,
        req: Request<pb::GetConfigurationVersionRequest>,
    ) -> Result<Response<pb::GetConfigurationVersionResponse>, Status> {
        let r = req.into_inner();
        self.stack(&r.stack_id).await?;
        if r.seq <= 0 {
            return Err(ServerError::invalid("seq", "must be 1 or more").into());
        }
        let v = self
            .state
            .store
            .get_configuration_version(&r.stack_id, r.seq)
            .await
            .map_err(ServerError::from)?;
        Ok(Response::new(pb::GetConfigurationVersionResponse {
            configuration_version: Some(version_to(&v)),
        }))
    }

    async fn get_convergence(
        &self,
        req: Request<pb::GetConvergenceRequest>,
    ) -> Result<Response<pb::GetConvergenceResponse>, Status> {
        let r = req.into_inner();
        self.stack(&r.stack_id).await?;
        let (latest, converged, positions) =
            deployments::convergence(&self.state, &r.stack_id).await?;
        Ok(Response::new(pb::GetConvergenceResponse {
            latest_config_version: latest,
            converged,
            deployments: positions
                .into_iter()
                .map(|p| pb::DeploymentConvergence {
                    name: p.name,
                    config_version: p.config_version,
                    lock_holder: p.lock_holder,
                    removed: p.removed,
                })
                .collect(),
        }))
    }
}
