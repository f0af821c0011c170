//! Authentication and authorization: one tower layer in front of every gRPC service.
//!
//! Every RPC is listed once in [`METHODS`] with what it needs. API keys arrive as
//! `authorization: Bearer <secret>` and are looked up by their SHA-256. A method missing from the
//! table is refused, so a new RPC cannot be served before someone decides who may call it. The
//! agent protocol authenticates with pool tokens inside its messages (the agent has no API key),
//! so its methods are `PoolToken` here and checked by the agent service.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use cairn_core::{ApiKey, Principal, Role};
use cairn_store::{Store, StoreError};
use tracing::Instrument;

use crate::crypto::sha256_hex;
use crate::error::ServerError;

/// What a method requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health checks, reflection).
    Public,
    /// A worker-pool token carried in the request messages.
    PoolToken,
    /// An API key with at least this role.
    Role(Role),
}

use Access::{PoolToken, Public, Role as R};
use Role::{Admin, Reader, Writer};

/// Every served RPC and what it needs.
pub const METHODS: &[(&str, Access)] = &[
    ("/cairn.v1.SystemService/GetVersion", R(Reader)),
    ("/cairn.v1.SystemService/WhoAmI", R(Reader)),
    ("/cairn.v1.SystemService/CreateApiKey", R(Admin)),
    ("/cairn.v1.SystemService/ListApiKeys", R(Admin)),
    ("/cairn.v1.SystemService/RevokeApiKey", R(Admin)),
    ("/cairn.v1.StackService/CreateStack", R(Admin)),
    ("/cairn.v1.StackService/GetStack", R(Reader)),
    ("/cairn.v1.StackService/ListStacks", R(Reader)),
    ("/cairn.v1.StackService/UpdateStack", R(Admin)),
    ("/cairn.v1.StackService/DeleteStack", R(Admin)),
    ("/cairn.v1.StackService/LockStack", R(Writer)),
    ("/cairn.v1.StackService/UnlockStack", R(Writer)),
    ("/cairn.v1.StackService/SetEnvVar", R(Writer)),
    ("/cairn.v1.StackService/DeleteEnvVar", R(Writer)),
    ("/cairn.v1.StackService/ListEnvVars", R(Reader)),
    ("/cairn.v1.StackService/SyncStack", R(Writer)),
    ("/cairn.v1.RunService/TriggerRun", R(Writer)),
    ("/cairn.v1.RunService/GetRun", R(Reader)),
    ("/cairn.v1.RunService/ListRuns", R(Reader)),
    ("/cairn.v1.RunService/ConfirmRun", R(Writer)),
    ("/cairn.v1.RunService/DiscardRun", R(Writer)),
    ("/cairn.v1.RunService/CancelRun", R(Writer)),
    ("/cairn.v1.RunService/StopRun", R(Writer)),
    ("/cairn.v1.RunService/ReplanRun", R(Writer)),
    ("/cairn.v1.RunService/ReviewRun", R(Writer)),
    ("/cairn.v1.RunService/WatchRun", R(Reader)),
    ("/cairn.v1.RunService/GetRunLogs", R(Reader)),
    ("/cairn.v1.PolicyService/CreatePolicy", R(Admin)),
    ("/cairn.v1.PolicyService/UpdatePolicy", R(Admin)),
    ("/cairn.v1.PolicyService/DeletePolicy", R(Admin)),
    ("/cairn.v1.PolicyService/GetPolicy", R(Reader)),
    ("/cairn.v1.PolicyService/ListPolicies", R(Reader)),
    ("/cairn.v1.PolicyService/AttachPolicy", R(Admin)),
    ("/cairn.v1.PolicyService/DetachPolicy", R(Admin)),
    ("/cairn.v1.PolicyService/ListPolicySamples", R(Reader)),
    // Evaluates caller-supplied code (bounded by the policy time budget): not for readers.
    ("/cairn.v1.PolicyService/SimulatePolicy", R(Writer)),
    // Integrations hold secrets (write-only); ingesting an event starts runs.
    ("/cairn.v1.VcsService/CreateIntegration", R(Admin)),
    ("/cairn.v1.VcsService/ListIntegrations", R(Reader)),
    ("/cairn.v1.VcsService/IngestEvent", R(Writer)),
    // Webhook URLs and secrets reach outside: admins only; the log is operational data.
    ("/cairn.v1.NotificationService/CreateWebhook", R(Admin)),
    ("/cairn.v1.NotificationService/ListWebhooks", R(Reader)),
    ("/cairn.v1.NotificationService/DeleteWebhook", R(Admin)),
    ("/cairn.v1.NotificationService/ListDeliveries", R(Reader)),
    // Managed state. Readers see versions and redacted outputs (the document itself only
    // reaches admins, checked in the service); restoring, force-unlocking are admin operations;
    // an import queues a run like TriggerRun (replacing existing state needs admin, checked in
    // the service).
    ("/cairn.v1.StateService/ListStateVersions", R(Reader)),
    ("/cairn.v1.StateService/GetStateVersion", R(Reader)),
    ("/cairn.v1.StateService/GetOutputs", R(Reader)),
    ("/cairn.v1.StateService/RestoreStateVersion", R(Admin)),
    ("/cairn.v1.StateService/GetStateLock", R(Reader)),
    ("/cairn.v1.StateService/ForceUnlock", R(Admin)),
    ("/cairn.v1.StateService/ImportState", R(Writer)),
    // Deployments: declaring, changing and removing them (and fetching a configuration)
    // starts runs, like TriggerRun.
    ("/cairn.v1.DeploymentService/CreateDeployment", R(Writer)),
    ("/cairn.v1.DeploymentService/UpdateDeployment", R(Writer)),
    ("/cairn.v1.DeploymentService/DeleteDeployment", R(Writer)),
    ("/cairn.v1.DeploymentService/GetDeployment", R(Reader)),
    ("/cairn.v1.DeploymentService/ListDeployments", R(Reader)),
    (
        "/cairn.v1.DeploymentService/CreateConfigurationVersion",
        R(Writer),
    ),
    (
        "/cairn.v1.DeploymentService/ListConfigurationVersions",
        R(Reader),
    ),
    (
        "/cairn.v1.DeploymentService/GetConfigurationVersion",
        R(Reader),
    ),
    ("/cairn.v1.DeploymentService/GetConvergence", R(Reader)),
    ("/cairn.v1.WorkerPoolService/CreateWorkerPool", R(Admin)),
    ("/cairn.v1.WorkerPoolService/ListWorkerPools", R(Reader)),
    ("/cairn.v1.WorkerPoolService/ListWorkers", R(Reader)),
    ("/cairn.agent.v1.AgentService/Session", PoolToken),
    ("/cairn.agent.v1.AgentService/UploadWorkspace", PoolToken),
    ("/cairn.agent.v1.AgentService/DownloadWorkspace", PoolToken),
    ("/grpc.health.v1.Health/Check", Public),
    ("/grpc.health.v1.Health/Watch", Public),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Public,
    ),
];

pub fn access_for(path: &str) -> Option<Access> {
    METHODS
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, access)| *access)
}

/// The authenticated caller, put in the request extensions for handlers.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub ip: String,
}

/// The caller of a request that passed the auth layer.
pub fn caller<T>(req: &tonic::Request<T>) -> Result<&Caller, tonic::Status> {
    req.extensions()
        .get::<Caller>()
        .ok_or_else(|| tonic::Status::unauthenticated("no authenticated caller"))
}

/// Resolves a bearer secret to its key; revoked and unknown keys are the same failure so that
/// a probe cannot tell them apart.
pub async fn authenticate(store: &dyn Store, secret: &str) -> Result<ApiKey, ServerError> {
    match store
        .find_api_key_by_hash(&sha256_hex(secret.as_bytes()))
        .await
    {
        Ok(k) if !k.revoked => Ok(k),
        Ok(_) | Err(StoreError::NotFound { .. }) => {
            Err(ServerError::Unauthenticated("invalid API key".into()))
        }
        Err(e) => Err(e.into()),
    }
}

fn bearer(req: &Request) -> Option<&str> {
    let v = req
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, secret) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(secret.trim())
        .filter(|s| !s.is_empty())
}

/// The layer: a span per RPC (parented to the caller's trace), then the access check.
pub async fn layer(State(store): State<Arc<dyn Store>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let span = cairn_telemetry::grpc::server_span(&path, req.headers());
    async move {
        let denied = |e: ServerError| tonic::Status::from(e).into_http::<axum::body::Body>();
        let need = match access_for(&path) {
            Some(n) => n,
            None => {
                return denied(ServerError::PermissionDenied(format!(
                    "method {path} is not served"
                )))
            }
        };
        let required = match need {
            Access::Public | Access::PoolToken => return next.run(req).await,
            Access::Role(r) => r,
        };
        let Some(secret) = bearer(&req) else {
            return denied(ServerError::Unauthenticated(
                "missing `authorization: Bearer <API key>`".into(),
            ));
        };
        let key = match authenticate(store.as_ref(), secret).await {
            Ok(k) => k,
            Err(e) => return denied(e),
        };
        if key.role < required {
            return denied(ServerError::PermissionDenied(format!(
                "{} needs the {} role; {} has {}",
                path,
                required.as_str(),
                key.login,
                key.role.as_str()
            )));
        }
        let ip = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string())
            .unwrap_or_default();
        req.extensions_mut().insert(Caller {
            principal: Principal::from_key(&key),
            ip,
        });
        next.run(req).await
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_of_every_served_service_is_in_the_table() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(cairn_proto::FILE_DESCRIPTOR_SET).unwrap();
        let served = [
            "cairn.v1.SystemService",
            "cairn.v1.StackService",
            "cairn.v1.RunService",
            "cairn.v1.WorkerPoolService",
            "cairn.v1.PolicyService",
            "cairn.v1.NotificationService",
            "cairn.v1.VcsService",
            "cairn.v1.DeploymentService",
            "cairn.v1.StateService",
            "cairn.v1.StateService",
            "cairn.agent.v1.AgentService",
        ];
        let mut n = 0;
        for file in &set.file {
            for svc in &file.service {
                let full = format!("{}.{}", file.package(), svc.name());
                if !served.contains(&full.as_str()) {
                    continue;
                }
                for m in &svc.method {
                    let path = format!("/{full}/{}", m.name());
                    assert!(access_for(&path).is_some(), "{path} missing from METHODS");
                    n += 1;
                }
            }
        }
        let table_cairn = METHODS
            .iter()
            .filter(|(p, _)| p.starts_with("/cairn."))
            .count();
        assert_eq!(n, table_cairn, "METHODS lists an RPC that does not exist");
    }
}
