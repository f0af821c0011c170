//! VcsService: integrations (secrets sealed at rest with the master key, never returned) and
//! IngestEvent, which stores and processes an event exactly as the webhook endpoint does
//! (without the signature: the caller authenticated with an API key).

use std::sync::Arc;

use cairn_core::validate;
use cairn_proto::v1 as pb;
use cairn_proto::v1::vcs_service_server::VcsService;
use cairn_store::VcsIntegration;
use tonic::{Request, Response, Status};

use crate::error::{Result, ServerError};
use crate::state::AppState;
use crate::vcs::ingest::{process_event, receive, Delivery, Receipt};
use crate::vcs::{seal, DEFAULT_WEBHOOK_MAX_BYTES};

pub struct VcsSvc {
    pub state: Arc<AppState>,
}

fn provider_name(p: i32) -> Result<&'static str> {
    match pb::VcsProvider::try_from(p) {
        Ok(pb::VcsProvider::Github) => Ok("GITHUB"),
        Ok(pb::VcsProvider::Gitlab) => Ok("GITLAB"),
        Ok(pb::VcsProvider::Git) => Ok("GIT"),
        _ => Err(ServerError::invalid(
            "integration.provider",
            "must be GITHUB, GITLAB or GIT",
        )),
    }
}

/// Without its secrets.
fn to_proto(i: &VcsIntegration) -> pb::Integration {
    let provider = match i.provider.as_str() {
        "GITHUB" => pb::VcsProvider::Github,
        "GITLAB" => pb::VcsProvider::Gitlab,
        "GIT" => pb::VcsProvider::Git,
        _ => pb::VcsProvider::Unspecified,
    };
    pb::Integration {
        id: i.id.clone(),
        provider: provider as i32,
        api_base_url: i.api_base_url.clone(),
        webhook_secret: String::new(),
        token: String::new(),
        poll_interval_seconds: i.poll_interval_seconds,
    }
}

pub async fn create_integration(state: &AppState, i: pb::Integration) -> Result<VcsIntegration> {
    let provider = provider_name(i.provider)?;
    let id = if i.id.is_empty() {
        format!(
            "{}-{}",
            provider.to_ascii_lowercase(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        )
    } else {
        validate::slug("integration.id", &i.id)?;
        i.id
    };
    validate::max_len("integration.api_base_url", &i.api_base_url, 2048)?;
    validate::max_len("integration.webhook_secret", &i.webhook_secret, 4096)?;
    validate::max_len("integration.token", &i.token, 4096)?;
    if !(0..=86_400).contains(&i.poll_interval_seconds) {
        return Err(ServerError::invalid(
            "integration.poll_interval_seconds",
            "must be between 0 and 86400",
        ));
    }
    if provider != "GIT" && i.webhook_secret.is_empty() {
        return Err(ServerError::invalid(
            "integration.webhook_secret",
            "required for GITHUB and GITLAB: deliveries are authenticated with it",
        ));
    }
    let record = VcsIntegration {
        webhook_secret: seal(state, &id, "webhook_secret", &i.webhook_secret)?,
        token: seal(state, &id, "token", &i.token)?,
        id,
        provider: provider.to_string(),
        api_base_url: i.api_base_url,
        poll_interval_seconds: i.poll_interval_seconds,
        created_at: cairn_core::now_nanos(),
    };
    Ok(state.store.create_vcs_integration(record).await?)
}

#[tonic::async_trait]
impl VcsService for VcsSvc {
    async fn create_integration(
        &self,
        req: Request<pb::CreateIntegrationRequest>,
    ) -> Result<Response<pb::CreateIntegrationResponse>, Status> {
        let i = req
            .into_inner()
            .integration
            .ok_or_else(|| ServerError::invalid("integration", "required"))?;
        let created = create_integration(&self.state, i).await?;
        tracing::info!(vcs.integration = %created.id, provider = %created.provider, "VCS integration created");
        Ok(Response::new(pb::CreateIntegrationResponse {
            integration: Some(to_proto(&created)),
        }))
    }

    async fn list_integrations(
        &self,
        _req: Request<pb::ListIntegrationsRequest>,
    ) -> Result<Response<pb::ListIntegrationsResponse>, Status> {
        let all = self
            .state
            .store
            .list_vcs_integrations()
            .await
            .map_err(ServerError::from)?;
        Ok(Response::new(pb::ListIntegrationsResponse {
            integrations: all.iter().map(to_proto).collect(),
        }))
    }

    async fn ingest_event(
        &self,
        req: Request<pb::IngestEventRequest>,
    ) -> Result<Response<pb::IngestEventResponse>, Status> {
        let r = req.into_inner();
        validate::non_empty("integration_id", &r.integration_id, 256).map_err(ServerError::from)?;
        validate::non_empty("event_type", &r.event_type, 256).map_err(ServerError::from)?;
        validate::max_len("delivery_id", &r.delivery_id, 256).map_err(ServerError::from)?;
        if r.payload.len() as u64
            > DEFAULT_WEBHOOK_MAX_BYTES.min(self.state.config.webhook_max_bytes)
        {
            return Err(ServerError::invalid("payload", "larger than webhook_max_bytes").into());
        }
        let delivery_id = if r.delivery_id.is_empty() {
            format!("sha256:{}", crate::crypto::sha256_hex(&r.payload))
        } else {
            r.delivery_id
        };
        let receipt = receive(
            &self.state,
            Delivery {
                integration_id: r.integration_id.clone(),
                provider: None,
                event_type: r.event_type,
                delivery_id: Some(delivery_id.clone()),
                signature: None,
                body: r.payload,
                verify: false,
            },
        )
        .await?;
        let (event_id, duplicate) = match receipt {
            Receipt::Stored {
                event_id,
                duplicate,
            } => (event_id, duplicate),
            Receipt::Pong | Receipt::Ignored(_) => {
                return Ok(Response::new(pb::IngestEventResponse::default()))
            }
        };
        let run_ids = if duplicate {
            Vec::new()
        } else {
            process_event(&self.state, (&r.integration_id, &delivery_id))
                .await?
                .run_ids
        };
        Ok(Response::new(pb::IngestEventResponse {
            event_id,
            duplicate,
            run_ids,
        }))
    }
}
