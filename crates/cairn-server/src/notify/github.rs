//! GitHub commit statuses (`POST /repos/{owner}/{repo}/statuses/{sha}`, context
//! `cairn/<stack id>`) and one pull-request comment per stack, created once and then edited in
//! place (`POST /repos/{o}/{r}/issues/{n}/comments`, `PATCH /repos/{o}/{r}/issues/comments/{id}`).

use std::sync::Arc;

use cairn_core::{ChangeAction, Run, RunState, Stack};
use serde_json::{json, Value};

use super::{delta_summary, retry, run_url, state_label, truncate_chars, VcsLookup};
use crate::state::AppState;

/// A GitHub API endpoint and the token to call it with.
#[derive(Clone)]
pub struct GithubApi {
    /// `https://api.github.com`, or a GitHub Enterprise `https://host/api/v3`.
    pub api_base_url: String,
    pub token: String,
}

impl std::fmt::Debug for GithubApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubApi")
            .field("api_base_url", &self.api_base_url)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// `owner/repo` from a stack's repository (`owner/repo`, an HTTPS URL or an SSH address).
pub fn owner_repo(repository: &str) -> Option<(String, String)> {
    let r = repository.trim().trim_end_matches('/');
    let r = r.strip_suffix(".git").unwrap_or(r);
    let path = match r.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map(|(_, p)| p)?,
        None => r.rsplit_once(':').map(|(_, p)| p).unwrap_or(r),
    };
    let mut parts = path.rsplit('/');
    let repo = parts.next().filter(|s| !s.is_empty())?;
    let owner = parts.next().filter(|s| !s.is_empty())?;
    Some((owner.to_string(), repo.to_string()))
}

/// GitHub's status state and description for a run.
pub fn status_of(run: &Run) -> (&'static str, String) {
    let delta = delta_summary(&run.delta);
    let (state, description) = match run.state {
        RunState::Finished => ("success", format!("Finished: {delta}")),
        RunState::Failed => {
            let why = if !run.policy_denies.is_empty() {
                run.policy_denies.join("; ")
            } else if !run.error.is_empty() {
                run.error.clone()
            } else {
                "failed".into()
            };
            ("failure", format!("Failed: {why}"))
        }
        RunState::Canceled | RunState::Stopped | RunState::Discarded => ("error", state_label(run)),
        RunState::Unconfirmed | RunState::PendingReview | RunState::Applying => {
            ("pending", format!("{}: {delta}", state_label(run)))
        }
        _ => ("pending", state_label(run)),
    };
    // GitHub refuses descriptions longer than 140 characters.
    (state, truncate_chars(&description, 140))
}

/// States at which the pull-request comment is written: a plan exists or the run ended.
fn comment_worthy(state: RunState) -> bool {
    state.is_terminal() || matches!(state, RunState::Unconfirmed | RunState::PendingReview)
}

/// Changes listed in a comment; the rest are counted.
const COMMENT_CHANGES: usize = 100;

/// Marks Cairn's comment for humans and tools.
pub fn comment_marker(stack_id: &str) -> String {
    format!("<!-- cairn:stack:{stack_id} -->")
}

/// The pull-request comment body: plan summary and changes list.
pub fn comment_body(run: &Run, url: Option<&str>) -> String {
    let mut out = comment_marker(&run.stack_id);
    out.push_str(&format!(
        "\n### Cairn · stack `{}` · {}\n\n",
        run.stack_id,
        state_label(run)
    ));
    let short = &run.commit.hash[..run.commit.hash.len().min(7)];
    let run_ref = match url {
        Some(u) => format!("[`{}`]({u})", run.id),
        None => format!("`{}`", run.id),
    };
    out.push_str(&format!(
        "Run {run_ref} ({}) at `{short}`: **{}**\n",
        run.run_type.as_str().to_lowercase(),
        delta_summary(&run.delta)
    ));
    for deny in &run.policy_denies {
        out.push_str(&format!("\n> **Denied:** {deny}\n"));
    }
    for warn in &run.policy_warnings {
        out.push_str(&format!("\n> **Warning:** {warn}\n"));
    }
    if run.policy_denies.is_empty() && !run.error.is_empty() {
        out.push_str(&format!("\n> **Error:** {}\n", run.error));
    }
    if run.changes.is_empty() {
        out.push_str("\nNo changes.\n");
    } else {
        out.push_str("\n| Change | Address |\n| --- | --- |\n");
        for c in run.changes.iter().take(COMMENT_CHANGES) {
            let action = match c.action {
                ChangeAction::Added => "add",
                ChangeAction::Changed => "change",
                ChangeAction::Deleted => "delete",
            };
            out.push_str(&format!("| {action} | `{}` |\n", c.entity.address));
        }
        if run.changes.len() > COMMENT_CHANGES {
            out.push_str(&format!(
                "\n…and {} more.\n",
                run.changes.len() - COMMENT_CHANGES
            ));
        }
    }
    out
}

/// Reports one run change of a stack; runs on the stack's worker.
pub(crate) async fn report(state: Arc<AppState>, vcs: Arc<dyn VcsLookup>, run: Arc<Run>) {
    let stack: Stack = match state.store.get_stack(&run.stack_id).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(stack.id = %run.stack_id, error = %e, "stack gone; no GitHub status");
            return;
        }
    };
    if run.commit.hash.is_empty() {
        return;
    }
    let Some(api) = vcs.github(&stack).await else {
        return;
    };
    let Some((owner, repo)) = owner_repo(&stack.repository) else {
        tracing::warn!(stack.id = %stack.id, repository = %stack.repository, "repository is not owner/repo; no GitHub status");
        return;
    };
    let base = format!(
        "{}/repos/{owner}/{repo}",
        api.api_base_url.trim_end_matches('/')
    );
    let url = run_url(&state, &run);
    let (gh_state, description) = status_of(&run);
    let mut status = json!({
        "state": gh_state,
        "description": description,
        "context": format!("cairn/{}", stack.id),
    });
    if let Some(u) = &url {
        status["target_url"] = Value::String(u.clone());
    }
    let sent = call(
        &state,
        &api,
        reqwest::Method::POST,
        format!("{base}/statuses/{}", run.commit.hash),
        &status,
    )
    .await;
    if !sent.succeeded() {
        tracing::warn!(run.id = %run.id, error = %sent.error, "GitHub status not sent");
    }

    if !comment_worthy(run.state) {
        return;
    }
    let Some(pr) = vcs.pull_request(&run).await else {
        return;
    };
    let body = json!({"body": comment_body(&run, url.as_deref())});
    let known = match state.store.pr_comment_id(&stack.id, pr as i64).await {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %e, "pull-request comment id not read");
            return;
        }
    };
    if let Some(id) = known {
        let edited = call(
            &state,
            &api,
            reqwest::Method::PATCH,
            format!("{base}/issues/comments/{id}"),
            &body,
        )
        .await;
        // A comment deleted by a person is recreated below; other failures are final.
        if edited.status != Some(404) {
            if !edited.succeeded() {
                tracing::warn!(run.id = %run.id, error = %edited.error, "pull-request comment not updated");
            }
            return;
        }
    }
    let created = call(
        &state,
        &api,
        reqwest::Method::POST,
        format!("{base}/issues/{pr}/comments"),
        &body,
    )
    .await;
    if !created.succeeded() {
        tracing::warn!(run.id = %run.id, error = %created.error, "pull-request comment not created");
        return;
    }
    let id = serde_json::from_str::<Value>(&created.body)
        .ok()
        .and_then(|v| v.get("id").and_then(Value::as_i64));
    match id {
        Some(id) => {
            if let Err(e) = state
                .store
                .set_pr_comment_id(&stack.id, pr as i64, id)
                .await
            {
                tracing::warn!(error = %e, "pull-request comment id not stored");
            }
        }
        None => tracing::warn!("GitHub answered a created comment without an id"),
    }
}

async fn call(
    state: &AppState,
    api: &GithubApi,
    method: reqwest::Method,
    url: String,
    body: &Value,
) -> retry::Attempt {
    let settings = state.notifier.settings();
    let client = state.notifier.client();
    let build = || {
        client
            .request(method.clone(), &url)
            .bearer_auth(&api.token)
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
            .json(body)
    };
    retry::send(&settings, build, |_| async {}).await
}
