//! Outgoing webhook deliveries: Cairn's signed JSON document or a Slack message, retried with
//! backoff, every attempt recorded in the delivery log.

use std::sync::Arc;

use cairn_core::Run;
use cairn_store::{DeliveryRecord, StoreError, WebhookRecord};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::{delta_summary, retry, run_url, state_label};
use crate::state::AppState;

pub const SIGNATURE_HEADER: &str = "X-Cairn-Signature-256";

/// `sha256=<hex HMAC-SHA256 of body keyed by secret>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Additional authenticated data binding a sealed secret to its webhook.
pub(crate) fn secret_aad(webhook_id: &str) -> Vec<u8> {
    format!("webhook:{webhook_id}").into_bytes()
}

/// The JSON document of a run change.
pub fn json_body(run: &Run, url: Option<&str>) -> Value {
    json!({
        "event": "run_state_changed",
        "run": {
            "id": run.id,
            "stack_id": run.stack_id,
            "state": run.state.as_str(),
            "type": run.run_type.as_str(),
            "triggered_by": run.triggered_by,
            "delta": run.delta,
            "commit": run.commit,
            "error": run.error,
            "policy_denies": run.policy_denies,
            "created_at": run.created_at,
            "updated_at": run.updated_at,
            "states_history": run.states_history.iter().map(|t| json!({
                "state": t.state.as_str(),
                "timestamp": t.timestamp,
            })).collect::<Vec<_>>(),
            "url": url,
        },
    })
}

/// A Slack incoming-webhook message summarising a run change.
pub fn slack_body(run: &Run, url: Option<&str>) -> Value {
    let state = state_label(run);
    let delta = delta_summary(&run.delta);
    let short = &run.commit.hash[..run.commit.hash.len().min(7)];
    let text = format!(
        "Cairn: {} run {} on stack {} is {} ({delta})",
        run.run_type.as_str().to_lowercase(),
        run.id,
        run.stack_id,
        run.state.as_str()
    );
    let mut summary = format!(
        "*Stack* `{}` · *Run* `{}`\n*State:* {state} · *Changes:* `{delta}`",
        run.stack_id, run.id
    );
    if !run.policy_denies.is_empty() {
        summary.push_str(&format!("\n*Denied:* {}", run.policy_denies.join("; ")));
    } else if !run.error.is_empty() {
        summary.push_str(&format!("\n*Error:* {}", run.error));
    }
    let mut blocks = vec![
        json!({"type": "section", "text": {"type": "mrkdwn", "text": summary}}),
        json!({"type": "context", "elements": [{
            "type": "mrkdwn",
            "text": format!("{} · commit `{short}` on `{}` · {}",
                run.run_type.as_str(), run.commit.branch, run.triggered_by),
        }]}),
    ];
    if let Some(url) = url {
        blocks.push(json!({"type": "actions", "elements": [{
            "type": "button",
            "text": {"type": "plain_text", "text": "Open run"},
            "url": url,
        }]}));
    }
    json!({"text": text, "blocks": blocks})
}

/// Delivers one run change to one webhook; runs on the webhook's worker.
pub(crate) async fn deliver(state: Arc<AppState>, hook: WebhookRecord, run: Arc<Run>) {
    let url = run_url(&state, &run);
    let body = match hook.format.as_str() {
        "SLACK" => slack_body(&run, url.as_deref()),
        _ => json_body(&run, url.as_deref()),
    };
    let body = serde_json::to_vec(&body).unwrap_or_default();
    let secret = if hook.secret.is_empty() {
        Vec::new()
    } else {
        match state.master_key.unwrap(&hook.secret, &secret_aad(&hook.id)) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(webhook.id = %hook.id, error = %e, "webhook secret cannot be opened");
                return;
            }
        }
    };
    let now = cairn_core::now_nanos();
    let mut record = DeliveryRecord {
        id: uuid::Uuid::now_v7().to_string(),
        webhook_id: hook.id.clone(),
        run_id: run.id.clone(),
        run_state: run.state.as_str().to_string(),
        status: "PENDING".into(),
        status_code: 0,
        attempts: 0,
        error: String::new(),
        created_at: now,
        updated_at: now,
    };
    let settings = state.notifier.settings();
    let client = state.notifier.client().clone();
    let signature = (!secret.is_empty()).then(|| signature(&secret, &body));
    let delivery_id = record.id.clone();
    let build = || {
        let mut req = client
            .post(&hook.url)
            .header("content-type", "application/json")
            .header("x-cairn-event", "run_state_changed")
            .header("x-cairn-delivery", &delivery_id)
            .body(body.clone());
        if let Some(sig) = &signature {
            req = req.header(SIGNATURE_HEADER, sig);
        }
        req
    };
    let store = state.store.clone();
    let keep = settings.deliveries_kept;
    retry::send(&settings, build, |attempt| {
        record.attempts = attempt.number as i32;
        record.status_code = attempt.status.map(i32::from).unwrap_or(0);
        record.error = attempt.error.clone();
        record.updated_at = cairn_core::now_nanos();
        record.status = match (attempt.succeeded(), attempt.last) {
            (true, _) => "SUCCEEDED",
            (false, true) => "FAILED",
            (false, false) => "PENDING",
        }
        .into();
        let rec = record.clone();
        let store = store.clone();
        async move {
            match store.put_webhook_delivery(rec, keep).await {
                Ok(()) => {}
                // Deleted while delivering: nothing left to log into.
                Err(StoreError::NotFound { .. }) => {
                    tracing::debug!("webhook deleted during delivery")
                }
                Err(e) => tracing::warn!(error = %e, "webhook delivery not logged"),
            }
        }
    })
    .await;
}
