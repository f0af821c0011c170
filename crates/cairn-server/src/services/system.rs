use std::sync::Arc;

use cairn_core::{validate, ApiKey};
use cairn_proto::v1 as pb;
use cairn_proto::v1::system_service_server::SystemService;
use tonic::{Request, Response, Status};

use crate::auth::caller;
use crate::convert;
use crate::crypto::{new_secret, sha256_hex};
use crate::error::{Result, ServerError};
use crate::state::AppState;

/// Incremented on incompatible API changes; clients refuse a mismatch.
pub const API_VERSION: i32 = 1;

pub struct SystemSvc {
    pub state: Arc<AppState>,
}

/// Creates an API key and returns it with its secret (shown once).
pub async fn create_api_key(
    state: &AppState,
    login: &str,
    name: &str,
    teams: Vec<String>,
    machine: bool,
    role: cairn_core::Role,
) -> Result<(ApiKey, String)> {
    validate::non_empty("login", login, 256)?;
    validate::max_len("name", name, 256)?;
    for (i, t) in teams.iter().enumerate() {
        validate::non_empty(&format!("teams[{i}]"), t, 256)?;
    }
    if teams.len() > 100 {
        return Err(ServerError::invalid("teams", "at most 100 teams"));
    }
    let secret = new_secret("cairn");
    let key = state
        .store
        .create_api_key(ApiKey {
            id: cairn_core::ids::new_id("key"),
            login: login.to_string(),
            name: if name.is_empty() { login } else { name }.to_string(),
            teams,
            machine,
            role,
            created_at: cairn_core::now_nanos(),
            revoked: false,
            secret_hash: sha256_hex(secret.as_bytes()),
        })
        .await?;
    Ok((key, secret))
}

#[tonic::async_trait]
impl SystemService for SystemSvc {
    async fn get_version(
        &self,
        _req: Request<pb::GetVersionRequest>,
    ) -> Result<Response<pb::GetVersionResponse>, Status> {
        Ok(Response::new(pb::GetVersionResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            api_version: API_VERSION,
        }))
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let p = &caller(&req)?.principal;
        Ok(Response::new(pb::WhoAmIResponse {
            login: p.login.clone(),
            name: p.name.clone(),
            teams: p.teams.clone(),
            machine: p.machine,
            role: convert::role(p.role) as i32,
        }))
    }

    async fn create_api_key(
        &self,
        req: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let r = req.into_inner();
        let role = convert::role_from("role", r.role)?;
        let (key, secret) =
            create_api_key(&self.state, &r.login, &r.name, r.teams, r.machine, role).await?;
        tracing::info!(key.id = %key.id, login = %key.login, role = key.role.as_str(), "API key created");
        Ok(Response::new(pb::CreateApiKeyResponse {
            key: Some(convert::api_key(&key)),
            secret,
        }))
    }

    async fn list_api_keys(
        &self,
        _req: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let keys = self
            .state
            .store
            .list_api_keys()
            .await
            .map_err(ServerError::from)?;
        Ok(Response::new(pb::ListApiKeysResponse {
            keys: keys.iter().map(convert::api_key).collect(),
        }))
    }

    async fn revoke_api_key(
        &self,
        req: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let id = req.into_inner().key_id;
        validate::non_empty("key_id", &id, 128).map_err(ServerError::from)?;
        self.state
            .store
            .revoke_api_key(&id)
            .await
            .map_err(ServerError::from)?;
        tracing::info!(key.id = %id, "API key revoked");
        Ok(Response::new(pb::RevokeApiKeyResponse {}))
    }
}
