//! The notifier's view of VCS integrations: where a stack's commit statuses go and which pull
//! request a run belongs to.

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use cairn_core::{Run, Stack};

use crate::notify::{GithubApi, VcsLookup};
use crate::state::AppState;

/// Integrations without an API address talk to github.com.
pub const GITHUB_API_DEFAULT: &str = "https://api.github.com";

/// Reads integrations from the store and unseals their tokens on every lookup, so that an
/// integration created or changed after start-up is used at once.
pub struct IntegrationLookup {
    // Weak: the state owns the notifier, which owns this lookup.
    state: Weak<AppState>,
}

impl IntegrationLookup {
    pub fn new(state: &Arc<AppState>) -> Self {
        IntegrationLookup {
            state: Arc::downgrade(state),
        }
    }

    /// Installs the lookup in `state`'s notifier.
    pub fn install(state: &Arc<AppState>) {
        state
            .notifier
            .set_vcs_lookup(Arc::new(IntegrationLookup::new(state)));
    }
}

/// The GitHub API of integration `id` with its unsealed token; `None` (logged) when the
/// integration is missing, not GitHub, or has no usable token.
pub async fn github_api(state: &AppState, id: &str) -> Option<GithubApi> {
    if id.is_empty() {
        return None;
    }
    let integration = match state.store.get_vcs_integration(id).await {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(integration.id = %id, error = %e, "VCS integration unavailable; no GitHub API");
            return None;
        }
    };
    if !integration.provider.eq_ignore_ascii_case("GITHUB") {
        return None;
    }
    let token = match super::unseal(state, &integration.id, "token", &integration.token) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(integration.id = %id, error = %e, "integration token not readable; no GitHub API");
            return None;
        }
    };
    let token = match String::from_utf8(token) {
        Ok(t) if !t.is_empty() => t,
        Ok(_) => {
            tracing::debug!(integration.id = %id, "GitHub integration has no token; no GitHub API");
            return None;
        }
        Err(_) => {
            tracing::warn!(integration.id = %id, "integration token is not UTF-8; no GitHub API");
            return None;
        }
    };
    let api_base_url = match integration.api_base_url.trim() {
        "" => GITHUB_API_DEFAULT.to_string(),
        url => url.to_string(),
    };
    Some(GithubApi {
        api_base_url,
        token,
    })
}

#[async_trait]
impl VcsLookup for IntegrationLookup {
    async fn github(&self, stack: &Stack) -> Option<GithubApi> {
        let state = self.state.upgrade()?;
        github_api(&state, &stack.vcs_integration_id).await
    }

    async fn pull_request(&self, run: &Run) -> Option<u64> {
        run.pull_request
    }
}
