//! Git in: VCS integrations, webhook deliveries and the plain-Git poller, all ending in
//! [`crate::policies::push::handle_push`].
//!
//! A delivery is authenticated, parsed and stored ([`ingest::receive`]) before it is
//! acknowledged; processing ([`ingest::process_pending`]) runs after the answer, in the
//! background, and again at start for whatever a crash left unprocessed. Routes:
//! `POST /webhooks/github/{integration_id}` and `POST /webhooks/gitlab/{integration_id}`.

pub mod cache;
pub mod ingest;
pub mod lookup;
pub mod poller;
pub mod webhook;

use std::sync::Arc;

use tokio::sync::{Mutex, Notify};

use crate::error::{Result, ServerError};
use crate::state::AppState;

/// GitHub caps webhook payloads at 25 MB.
pub const DEFAULT_WEBHOOK_MAX_BYTES: u64 = cairn_vcs::MAX_BODY_DEFAULT as u64;

/// Process-wide VCS state kept in [`AppState`].
#[derive(Default)]
pub struct Vcs {
    /// Wakes the background processor after a delivery is stored.
    pub(crate) wake: Notify,
    /// One event is processed at a time in this process, so that the webhook's processor and
    /// the start-up sweep never handle the same event concurrently (the per-commit run dedup
    /// reads before it writes).
    pub(crate) processing: Mutex<()>,
}

/// Integration secrets are sealed with the master key, bound to their integration and field.
pub(crate) fn seal(
    state: &AppState,
    integration_id: &str,
    field: &str,
    secret: &str,
) -> Result<Vec<u8>> {
    if secret.is_empty() {
        return Ok(Vec::new());
    }
    state
        .master_key
        .wrap(secret.as_bytes(), aad(integration_id, field).as_bytes())
}

pub(crate) fn unseal(
    state: &AppState,
    integration_id: &str,
    field: &str,
    sealed: &[u8],
) -> Result<Vec<u8>> {
    if sealed.is_empty() {
        return Ok(Vec::new());
    }
    state
        .master_key
        .unwrap(sealed, aad(integration_id, field).as_bytes())
        .map_err(|e| ServerError::Crypto(format!("integration {integration_id} {field}: {e}")))
}

fn aad(integration_id: &str, field: &str) -> String {
    format!("cairn-vcs-integration:{integration_id}:{field}")
}

/// Starts the delivery processor (which first sweeps what a previous process left
/// unprocessed) and the plain-Git poller; both stop with the server.
pub fn spawn(state: Arc<AppState>) -> Vec<tokio::task::JoinHandle<()>> {
    vec![
        tokio::spawn(ingest::run_loop(state.clone())),
        tokio::spawn(poller::run_loop(state)),
    ]
}
