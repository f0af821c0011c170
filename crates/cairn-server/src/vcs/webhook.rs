//! `POST /webhooks/github/{integration_id}` and `POST /webhooks/gitlab/{integration_id}` (the
//! integration may also be given as `?integration=<id>` on `/webhooks/{provider}`).
//!
//! Answers: 202 `{"status":"accepted","event_id":…}` once the delivery is stored; 200
//! `{"status":"duplicate",…}` for a delivery id seen before; 200 for `ping` and for known
//! events that need nothing; 401 missing or wrong signature/token; 400 unknown event type or
//! malformed payload; 404 unknown integration; 413 body over `webhook_max_bytes`. Every 4xx is
//! logged with its reason and stores nothing.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use cairn_vcs::Provider;
use serde_json::json;

use super::ingest::{receive, Delivery, Receipt};
use crate::error::ServerError;
use crate::state::AppState;

pub fn router(state: Arc<AppState>) -> axum::Router {
    axum::Router::new()
        .route("/webhooks/{provider}/{integration_id}", post(with_path))
        .route("/webhooks/{provider}", post(with_query))
        .with_state(state)
}

async fn with_path(
    State(state): State<Arc<AppState>>,
    Path((provider, integration_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(&state, &provider, integration_id, headers, body).await
}

async fn with_query(
    State(state): State<Arc<AppState>>,
    Path(provider): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let id = q.get("integration").cloned().unwrap_or_default();
    handle(&state, &provider, id, headers, body).await
}

fn reject(status: StatusCode, provider: &str, integration: &str, reason: String) -> Response {
    tracing::warn!(
        http.status = status.as_u16(),
        vcs.provider = provider,
        vcs.integration = integration,
        reason = %reason,
        "webhook rejected"
    );
    (status, Json(json!({"status": "rejected", "error": reason}))).into_response()
}

async fn handle(
    state: &AppState,
    provider_name: &str,
    integration_id: String,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let provider = match provider_name {
        "github" => Provider::GitHub,
        "gitlab" => Provider::GitLab,
        other => {
            return reject(
                StatusCode::NOT_FOUND,
                other,
                &integration_id,
                format!("no webhook endpoint for provider {other:?} (use github or gitlab)"),
            )
        }
    };
    if integration_id.is_empty() {
        return reject(
            StatusCode::NOT_FOUND,
            provider_name,
            "",
            "no integration id: POST /webhooks/{provider}/{integration_id}".into(),
        );
    }
    let limit = usize::try_from(state.config.webhook_max_bytes).unwrap_or(usize::MAX);
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.config.webhook_max_bytes) {
        return reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            provider_name,
            &integration_id,
            format!(
                "body of {} bytes exceeds the limit of {limit} bytes",
                declared.unwrap_or(0)
            ),
        );
    }
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(e) => {
            return reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                provider_name,
                &integration_id,
                format!("body exceeds the limit of {limit} bytes ({e})"),
            )
        }
    };
    let hook = match cairn_vcs::Webhook::from_headers(&headers) {
        Ok(h) if h.provider == provider => h,
        Ok(h) => {
            return reject(
                StatusCode::BAD_REQUEST,
                provider_name,
                &integration_id,
                format!(
                    "{} event headers sent to the {provider_name} endpoint",
                    h.provider
                ),
            )
        }
        Err(e) => {
            return reject(
                StatusCode::BAD_REQUEST,
                provider_name,
                &integration_id,
                e.to_string(),
            )
        }
    };
    let delivery = Delivery {
        integration_id: integration_id.clone(),
        provider: Some(provider),
        event_type: hook.event.clone(),
        delivery_id: hook.delivery_id.clone(),
        signature: hook.signature.clone(),
        body: body.to_vec(),
        verify: true,
    };
    match receive(state, delivery).await {
        Ok(Receipt::Pong) => (StatusCode::OK, Json(json!({"status": "pong"}))).into_response(),
        Ok(Receipt::Ignored(reason)) => (
            StatusCode::OK,
            Json(json!({"status": "ignored", "reason": reason})),
        )
            .into_response(),
        Ok(Receipt::Stored {
            event_id,
            duplicate,
        }) => {
            let (status, word) = if duplicate {
                (StatusCode::OK, "duplicate")
            } else {
                (StatusCode::ACCEPTED, "accepted")
            };
            (
                status,
                Json(json!({"status": word, "event_id": event_id, "duplicate": duplicate})),
            )
                .into_response()
        }
        Err(e) => {
            let status = match &e {
                ServerError::NotFound { .. } => StatusCode::NOT_FOUND,
                ServerError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
                ServerError::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
                ServerError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            if status.is_client_error() {
                reject(status, provider_name, &integration_id, e.to_string())
            } else {
                tracing::error!(error = %e, vcs.integration = %integration_id, "webhook failed");
                (
                    status,
                    Json(json!({"status": "error", "error": e.to_string()})),
                )
                    .into_response()
            }
        }
    }
}
