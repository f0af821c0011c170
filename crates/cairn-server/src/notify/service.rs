//! NotificationService: webhooks and their delivery log.

use std::sync::Arc;

use cairn_proto::v1 as pb;
use cairn_proto::v1::notification_service_server::NotificationService;
use cairn_store::{DeliveryRecord, StoreError, WebhookRecord};
use tonic::{Request, Response, Status};

use super::webhook::secret_aad;
use crate::error::{Result, ServerError};
use crate::state::AppState;

pub struct NotificationSvc {
    pub state: Arc<AppState>,
}

const MAX_URL: usize = 2048;
const MAX_SECRET: usize = 1024;

fn format_from(f: i32) -> Result<&'static str> {
    match pb::WebhookFormat::try_from(f) {
        Ok(pb::WebhookFormat::Unspecified | pb::WebhookFormat::Json) => Ok("JSON"),
        Ok(pb::WebhookFormat::Slack) => Ok("SLACK"),
        Err(_) => Err(ServerError::invalid(
            "webhook.format",
            "must be JSON or SLACK",
        )),
    }
}

fn webhook_proto(w: &WebhookRecord) -> pb::Webhook {
    pb::Webhook {
        id: w.id.clone(),
        url: w.url.clone(),
        secret: String::new(),
        stack_id: w.stack_id.clone(),
        format: match w.format.as_str() {
            "SLACK" => pb::WebhookFormat::Slack,
            _ => pb::WebhookFormat::Json,
        } as i32,
        created_at: w.created_at,
    }
}

fn delivery_proto(d: DeliveryRecord) -> pb::Delivery {
    pb::Delivery {
        id: d.id,
        webhook_id: d.webhook_id,
        run_id: d.run_id,
        run_state: d.run_state,
        status: d.status,
        status_code: d.status_code,
        attempts: d.attempts,
        error: d.error,
        created_at: d.created_at,
        updated_at: d.updated_at,
    }
}

/// An absolute http(s) URL with a host.
fn check_url(url: &str) -> Result<()> {
    const FIELD: &str = "webhook.url";
    if url.is_empty() || url.len() > MAX_URL {
        return Err(ServerError::invalid(
            FIELD,
            format!("must be 1 to {MAX_URL} bytes"),
        ));
    }
    let parsed =
        reqwest::Url::parse(url).map_err(|e| ServerError::invalid(FIELD, format!("{e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ServerError::invalid(FIELD, "scheme must be http or https"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(ServerError::invalid(FIELD, "has no host"));
    }
    Ok(())
}

impl NotificationSvc {
    async fn create(&self, w: pb::Webhook) -> Result<WebhookRecord> {
        let id = if w.id.is_empty() {
            format!("wh-{}", uuid::Uuid::new_v4().simple())
        } else {
            cairn_core::validate::slug("webhook.id", &w.id)?;
            w.id
        };
        check_url(&w.url)?;
        if w.secret.len() > MAX_SECRET {
            return Err(ServerError::invalid(
                "webhook.secret",
                format!("at most {MAX_SECRET} bytes"),
            ));
        }
        let format = format_from(w.format)?;
        if !w.stack_id.is_empty() {
            match self.state.store.get_stack(&w.stack_id).await {
                Ok(_) => {}
                Err(StoreError::NotFound { .. }) => {
                    return Err(ServerError::invalid(
                        "webhook.stack_id",
                        format!("no stack {:?}", w.stack_id),
                    ))
                }
                Err(e) => return Err(e.into()),
            }
        }
        let secret = if w.secret.is_empty() {
            Vec::new()
        } else {
            self.state
                .master_key
                .wrap(w.secret.as_bytes(), &secret_aad(&id))?
        };
        let record = WebhookRecord {
            id,
            url: w.url,
            secret,
            stack_id: w.stack_id,
            format: format.to_string(),
            created_at: cairn_core::now_nanos(),
        };
        Ok(self.state.store.create_webhook(record).await?)
    }
}

#[tonic::async_trait]
impl NotificationService for NotificationSvc {
    async fn create_webhook(
        &self,
        req: Request<pb::CreateWebhookRequest>,
    ) -> Result<Response<pb::CreateWebhookResponse>, Status> {
        let w = req
            .into_inner()
            .webhook
            .ok_or_else(|| ServerError::invalid("webhook", "required"))?;
        let created = self.create(w).await?;
        Ok(Response::new(pb::CreateWebhookResponse {
            webhook: Some(webhook_proto(&created)),
        }))
    }

    async fn list_webhooks(
        &self,
        req: Request<pb::ListWebhooksRequest>,
    ) -> Result<Response<pb::ListWebhooksResponse>, Status> {
        let stack_id = req.into_inner().stack_id;
        let hooks = self
            .state
            .store
            .list_webhooks()
            .await
            .map_err(ServerError::from)?;
        let webhooks = hooks
            .iter()
            .filter(|h| stack_id.is_empty() || h.stack_id.is_empty() || h.stack_id == stack_id)
            .map(webhook_proto)
            .collect();
        Ok(Response::new(pb::ListWebhooksResponse { webhooks }))
    }

    async fn delete_webhook(
        &self,
        req: Request<pb::DeleteWebhookRequest>,
    ) -> Result<Response<pb::DeleteWebhookResponse>, Status> {
        let id = req.into_inner().id;
        if id.is_empty() {
            return Err(ServerError::invalid("id", "required").into());
        }
        self.state
            .store
            .delete_webhook(&id)
            .await
            .map_err(ServerError::from)?;
        Ok(Response::new(pb::DeleteWebhookResponse {}))
    }

    async fn list_deliveries(
        &self,
        req: Request<pb::ListDeliveriesRequest>,
    ) -> Result<Response<pb::ListDeliveriesResponse>, Status> {
        let req = req.into_inner();
        if req.webhook_id.is_empty() {
            return Err(ServerError::invalid("webhook_id", "required").into());
        }
        if !(0..=500).contains(&req.limit) {
            return Err(ServerError::invalid("limit", "must be between 0 and 500").into());
        }
        let limit = if req.limit == 0 { 50 } else { req.limit as u32 };
        let store = &self.state.store;
        store
            .get_webhook(&req.webhook_id)
            .await
            .map_err(ServerError::from)?;
        let deliveries = store
            .list_webhook_deliveries(&req.webhook_id, limit)
            .await
            .map_err(ServerError::from)?
            .into_iter()
            .map(delivery_proto)
            .collect();
        Ok(Response::new(pb::ListDeliveriesResponse { deliveries }))
    }
}
