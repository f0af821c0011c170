//! From a delivery to stored event (before the 2xx), and from stored event to runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_core::{Commit, Stack};
use cairn_store::{StoreError, VcsEventRecord, VcsIntegration};
use cairn_vcs::{
    git, is_zero_sha, CommentEvent, PrAction, PrFacts, Provider, PullRequestEvent, PushEvent,
    PushPolicyDocs, Repository, VcsError, VcsEvent,
};
use serde::{Deserialize, Serialize};

use crate::error::{Result, ServerError};
use crate::policies::push::{handle_push_for, PushEvent as StackPush};
use crate::state::AppState;

/// One delivery as received.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub integration_id: String,
    /// The provider the route names (`/webhooks/github/…`); None for IngestEvent, which uses
    /// the integration's.
    pub provider: Option<Provider>,
    pub event_type: String,
    pub delivery_id: Option<String>,
    /// The signature or token header; checked only when `verify`.
    pub signature: Option<String>,
    pub body: Vec<u8>,
    /// Webhooks authenticate with the integration secret; IngestEvent callers already did with
    /// an API key.
    pub verify: bool,
}

/// What [`receive`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipt {
    Pong,
    /// Well-formed, known, and needing no action: acknowledged, not stored.
    Ignored(String),
    Stored {
        event_id: String,
        duplicate: bool,
    },
}

/// What processing an event did, stored as the event's `result`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub run_ids: Vec<String>,
    pub notes: Vec<String>,
}

/// The provider an integration's deliveries are parsed as. Plain-Git integrations have no
/// webhooks of their own; events ingested for them use GitHub's format.
pub fn integration_provider(i: &VcsIntegration) -> Provider {
    match i.provider.as_str() {
        "GITLAB" => Provider::GitLab,
        _ => Provider::GitHub,
    }
}

fn client_error(e: VcsError) -> ServerError {
    match e {
        VcsError::MissingSignature { .. } | VcsError::BadSignature { .. } => {
            ServerError::Unauthenticated(e.to_string())
        }
        VcsError::UnknownEvent { .. } | VcsError::MissingEventHeader => {
            ServerError::invalid("event", e.to_string())
        }
        e if e.is_client_error() => ServerError::invalid("payload", e.to_string()),
        e => ServerError::Internal(e.to_string()),
    }
}

/// Authenticates, parses and stores one delivery; stores nothing when any step refuses it.
/// NotFound for an unknown integration, Unauthenticated for a missing or wrong signature,
/// InvalidArgument for an unknown event type or a malformed payload.
pub async fn receive(state: &AppState, d: Delivery) -> Result<Receipt> {
    let integration = state.store.get_vcs_integration(&d.integration_id).await?;
    let provider = integration_provider(&integration);
    if let Some(route) = d.provider {
        if integration.provider != route.policy_name() {
            // Answer as for an unknown integration: the URL is wrong for this provider.
            return Err(ServerError::NotFound {
                kind: "vcs integration",
                id: format!("{} ({} webhook)", d.integration_id, route.as_str()),
            });
        }
    }
    if d.verify {
        let secret = super::unseal(
            state,
            &integration.id,
            "webhook_secret",
            &integration.webhook_secret,
        )?;
        if secret.is_empty() {
            return Err(ServerError::Unauthenticated(format!(
                "integration {} has no webhook secret",
                integration.id
            )));
        }
        let hook = cairn_vcs::Webhook {
            provider,
            event: d.event_type.clone(),
            delivery_id: d.delivery_id.clone(),
            signature: d.signature.clone(),
        };
        hook.verify(&secret, &d.body).map_err(client_error)?;
    }
    let event = cairn_vcs::parse(provider, &d.event_type, &d.body).map_err(client_error)?;
    match &event {
        VcsEvent::Ping(_) => return Ok(Receipt::Pong),
        VcsEvent::Ignored(i) => return Ok(Receipt::Ignored(i.reason.clone())),
        _ => {}
    }
    // Without a delivery id, identical bodies count as the same delivery.
    let delivery_id = d
        .delivery_id
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("sha256:{}", crate::crypto::sha256_hex(&d.body)));
    let record = VcsEventRecord {
        id: format!("evt-{}", uuid::Uuid::new_v4().simple()),
        integration_id: integration.id.clone(),
        provider: provider.as_str().to_string(),
        delivery_id: delivery_id.clone(),
        event_type: d.event_type.clone(),
        payload: d.body,
        received_at: cairn_core::now_nanos(),
        processed_at: 0,
        result: String::new(),
    };
    match state.store.add_vcs_event(record).await {
        Ok(r) => {
            tracing::info!(vcs.event = %r.id, vcs.delivery = %delivery_id, vcs.type = %r.event_type, "VCS event stored");
            state.vcs.wake.notify_one();
            Ok(Receipt::Stored {
                event_id: r.id,
                duplicate: false,
            })
        }
        Err(StoreError::AlreadyExists { .. }) => {
            let existing = state
                .store
                .get_vcs_event_by_delivery(&integration.id, &delivery_id)
                .await?;
            Ok(Receipt::Stored {
                event_id: existing.id,
                duplicate: true,
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Processes every stored, unprocessed event, oldest first.
pub async fn process_pending(state: &AppState) -> Result<()> {
    let _one = state.vcs.processing.lock().await;
    for rec in state.store.unprocessed_vcs_events().await? {
        process_locked(state, &rec).await?;
    }
    Ok(())
}

/// Processes one stored event now (IngestEvent) unless done already; its outcome either way.
pub async fn process_event(state: &AppState, event_id_delivery: (&str, &str)) -> Result<Outcome> {
    let _one = state.vcs.processing.lock().await;
    let (integration_id, delivery_id) = event_id_delivery;
    let rec = state
        .store
        .get_vcs_event_by_delivery(integration_id, delivery_id)
        .await?;
    if rec.processed_at != 0 {
        return Ok(serde_json::from_str(&rec.result).unwrap_or_default());
    }
    process_locked(state, &rec).await
}

async fn process_locked(state: &AppState, rec: &VcsEventRecord) -> Result<Outcome> {
    let outcome = match handle(state, rec).await {
        Ok(o) => o,
        // A stored event that cannot be handled (its stacks' repository unreachable, a policy
        // failing) is marked with the reason rather than retried forever.
        Err(e) => {
            tracing::warn!(vcs.event = %rec.id, error = %e, "VCS event not processed");
            Outcome {
                run_ids: Vec::new(),
                notes: vec![format!("error: {e}")],
            }
        }
    };
    let result = serde_json::to_string(&outcome).unwrap_or_default();
    state
        .store
        .mark_vcs_event_processed(&rec.id, cairn_core::now_nanos(), &result)
        .await?;
    tracing::info!(vcs.event = %rec.id, runs = ?outcome.run_ids, "VCS event processed");
    Ok(outcome)
}

/// Background processor: what a previous process left unprocessed first, then each new event.
pub async fn run_loop(state: Arc<AppState>) {
    loop {
        let woken = state.vcs.wake.notified();
        if let Err(e) = process_pending(&state).await {
            tracing::warn!(error = %e, "processing VCS events");
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = woken => {}
            // Retry after storage errors without waiting for the next delivery.
            _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {}
        }
    }
}

async fn handle(state: &AppState, rec: &VcsEventRecord) -> Result<Outcome> {
    let provider = if rec.provider == "gitlab" {
        Provider::GitLab
    } else {
        Provider::GitHub
    };
    let event = cairn_vcs::parse(provider, &rec.event_type, &rec.payload).map_err(client_error)?;
    let mut out = Outcome::default();
    match event {
        VcsEvent::Push(p) => {
            if p.deleted || is_zero_sha(&p.after) {
                out.notes
                    .push(format!("{} deleted: nothing to run", p.full_ref));
                return Ok(out);
            }
            let groups = matching_stacks(state, &rec.integration_id, &p.repository).await?;
            if groups.is_empty() {
                out.notes
                    .push(format!("no stack uses {}", p.repository.full_name));
            }
            let files = match push_files(state, &p, &groups).await {
                Ok(files) => {
                    learn_config_paths(&p, &groups, &files);
                    files
                }
                Err(e) => {
                    out.notes.push(format!("affected files unknown: {e}"));
                    Vec::new()
                }
            };
            push_to_stacks(state, &groups, &p, files, &mut out).await?;
        }
        VcsEvent::PullRequest(pr) => {
            remember_pull_request(state, &rec.integration_id, &pr).await;
            // Spacelift hands push policies the actions its input schema names (opened,
            // reopened, synchronize, labeled, unlabeled, edited, closed, merged); the others
            // (assigned, review_requested, ...) change nothing a policy could see.
            if let PrAction::Other(action) = &pr.action {
                out.notes.push(format!(
                    "pull request {}: action {action} is not passed to push policies",
                    pr.number
                ));
                return Ok(out);
            }
            pull_request_to_stacks(state, &rec.integration_id, &pr, None, &mut out).await?;
        }
        VcsEvent::PullRequestComment(c) => {
            if !cairn_vcs::is_command_comment(&c.body) {
                out.notes.push(format!(
                    "comment on pull request {} does not start with {}: ignored",
                    c.pr_number,
                    cairn_vcs::COMMENT_PREFIXES.join(" or ")
                ));
                return Ok(out);
            }
            let pr = match c.pull_request.clone() {
                Some(pr) => Some(*pr),
                None => known_pull_request(state, &rec.integration_id, &c).await?,
            };
            let Some(pr) = pr else {
                out.notes.push(format!(
                    "comment on pull request {}: no event of that pull request was received, \
                     so its head is unknown: ignored",
                    c.pr_number
                ));
                return Ok(out);
            };
            pull_request_to_stacks(state, &rec.integration_id, &pr, Some(&c), &mut out).await?;
        }
        VcsEvent::Ping(_) | VcsEvent::Ignored(_) => out.notes.push("nothing to do".into()),
    }
    Ok(out)
}

/// A pull-request event (or a comment on one) through the push policies of its stacks.
async fn pull_request_to_stacks(
    state: &AppState,
    integration_id: &str,
    pr: &PullRequestEvent,
    comment: Option<&CommentEvent>,
    out: &mut Outcome,
) -> Result<()> {
    let groups = matching_stacks(state, integration_id, &pr.repository).await?;
    if groups.is_empty() {
        out.notes
            .push(format!("no stack uses {}", pr.repository.full_name));
    }
    for (repository, stacks) in &groups {
        let facts = match pr_facts(state, repository, pr).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(vcs.repository = %repository, pull_request = pr.number, error = %e, "pull request diff unknown; push policies see no diff");
                out.notes.push(format!("pull request diff unknown: {e}"));
                PrFacts::default()
            }
        };
        let mut docs = match comment {
            Some(c) => PushPolicyDocs::for_comment(c, pr, &facts),
            None => PushPolicyDocs::for_pull_request(pr, &facts),
        };
        if let Some(meta) = &facts.head_commit {
            docs = docs.with_head_meta(meta);
        }
        let ev = stack_push(repository, docs, pr.fork);
        collect(state, stacks, &ev, out).await?;
    }
    Ok(())
}

/// Keeps the newest event of each pull request: GitHub comments name only its number.
async fn remember_pull_request(state: &AppState, integration_id: &str, pr: &PullRequestEvent) {
    let record = match serde_json::to_string(pr) {
        Ok(json) => cairn_store::PullRequestRecord {
            integration_id: integration_id.to_string(),
            repository: pr.repository.full_name.clone(),
            number: i64::try_from(pr.number).unwrap_or(i64::MAX),
            event_json: json,
            updated_at: cairn_core::now_nanos(),
        },
        Err(e) => {
            tracing::warn!(pull_request = pr.number, error = %e, "pull request not remembered");
            return;
        }
    };
    if let Err(e) = state.store.put_pull_request(record).await {
        // Only later comments on it lose their context; the event itself goes on.
        tracing::warn!(pull_request = pr.number, error = %e, "pull request not remembered");
    }
}

/// The pull request a GitHub comment is on, from its newest stored event, completed with what
/// the comment's own payload says now (title, labels, open or closed).
async fn known_pull_request(
    state: &AppState,
    integration_id: &str,
    c: &CommentEvent,
) -> Result<Option<PullRequestEvent>> {
    let number = i64::try_from(c.pr_number).unwrap_or(i64::MAX);
    let Some(rec) = state
        .store
        .get_pull_request(integration_id, &c.repository.full_name, number)
        .await?
    else {
        // Opened before Cairn saw it: ask GitHub, as a pull_request event would have told.
        let pr = fetch_pull_request(state, integration_id, c).await;
        if let Some(pr) = &pr {
            remember_pull_request(state, integration_id, pr).await;
        }
        return Ok(pr);
    };
    match serde_json::from_str::<PullRequestEvent>(&rec.event_json) {
        Ok(pr) => Ok(Some(pr)),
        Err(e) => {
            tracing::warn!(pull_request = c.pr_number, error = %e, "stored pull request unreadable");
            Ok(None)
        }
    }
}

/// `GET /repos/{owner}/{repo}/pulls/{number}` at the integration's GitHub API, read as the
/// `pull_request` object of a webhook (the API returns the same object). `None`, logged, when
/// the integration has no API token or GitHub does not answer with the pull request.
async fn fetch_pull_request(
    state: &AppState,
    integration_id: &str,
    c: &CommentEvent,
) -> Option<PullRequestEvent> {
    let api = super::lookup::github_api(state, integration_id).await?;
    let url = format!(
        "{}/repos/{}/pulls/{}",
        api.api_base_url.trim_end_matches('/'),
        c.repository.full_name,
        c.pr_number
    );
    let answer = state
        .notifier
        .client()
        .get(&url)
        .bearer_auth(&api.token)
        .header("accept", "application/vnd.github+json")
        .header("x-github-api-version", "2022-11-28")
        .send()
        .await
        .and_then(|r| r.error_for_status());
    let body: serde_json::Value = match answer {
        Ok(r) => match r.json().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(%url, error = %e, "GitHub pull request unreadable");
                return None;
            }
        },
        Err(e) => {
            tracing::warn!(%url, error = %e, "GitHub pull request not fetched");
            return None;
        }
    };
    let payload = serde_json::json!({
        // Any action the parser knows: the comment's own (`commented`) replaces it.
        "action": "synchronize",
        "number": c.pr_number,
        "repository": body["base"]["repo"].clone(),
        "pull_request": body,
    });
    let bytes = serde_json::to_vec(&payload).ok()?;
    match cairn_vcs::parse(Provider::GitHub, "pull_request", &bytes) {
        Ok(VcsEvent::PullRequest(pr)) => Some(*pr),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(%url, error = %e, "GitHub pull request not understood");
            None
        }
    }
}

/// The adapter to the push handling of `policies::push`: the event under the repository
/// spelling a group of stacks uses.
fn stack_push(repository: &str, docs: PushPolicyDocs, from_fork: bool) -> StackPush {
    let commit = Commit {
        author: docs.push.author.clone(),
        branch: docs.push.branch.clone(),
        created_at: docs.push.created_at,
        hash: docs.hash.clone(),
        message: docs.push.message.clone(),
    };
    StackPush {
        repository: repository.to_string(),
        commit,
        push: docs.push,
        pull_request: docs.pull_request,
        from_fork,
    }
}

async fn collect(
    state: &AppState,
    stacks: &[Stack],
    ev: &StackPush,
    out: &mut Outcome,
) -> Result<()> {
    // Fresh copies: an earlier event of the same batch may have locked or moved them.
    let mut fresh = Vec::with_capacity(stacks.len());
    for s in stacks {
        match state.store.get_stack(&s.id).await {
            Ok(s) => fresh.push(s),
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for r in handle_push_for(state, &fresh, ev).await? {
        for n in &r.notes {
            out.notes.push(format!("{}: {n}", r.stack_id));
        }
        if let Some(run) = r.run {
            out.run_ids.push(run.id);
        }
    }
    Ok(())
}

/// Applies a push (webhook or poller) to the matching stacks.
pub(crate) async fn push_to_stacks(
    state: &AppState,
    groups: &[(String, Vec<Stack>)],
    p: &PushEvent,
    files: Vec<String>,
    out: &mut Outcome,
) -> Result<()> {
    for (repository, stacks) in groups {
        let docs = PushPolicyDocs::for_push(p, files.clone());
        let ev = stack_push(repository, docs, false);
        collect(state, stacks, &ev, out).await?;
    }
    Ok(())
}

fn norm(s: &str) -> String {
    let s = s.trim().trim_end_matches('/').to_ascii_lowercase();
    s.strip_suffix(".git").unwrap_or(&s).to_string()
}

/// Does a stack's `repository` name the event's repository: the same clone or web URL, the
/// same `owner/name`, or any URL (https, ssh, scp-like) ending in it.
pub fn repository_matches(stack_repository: &str, repo: &Repository) -> bool {
    let s = norm(stack_repository);
    if s.is_empty() {
        return false;
    }
    let full = norm(&repo.full_name);
    [&repo.clone_url, &repo.html_url]
        .iter()
        .any(|u| !u.is_empty() && norm(u) == s)
        || (!full.is_empty()
            && (s == full || s.ends_with(&format!("/{full}")) || s.ends_with(&format!(":{full}"))))
}

/// Stacks of this event, grouped by their `repository` value. A stack bound to another
/// integration is not one of them.
pub(crate) async fn matching_stacks(
    state: &AppState,
    integration_id: &str,
    repo: &Repository,
) -> Result<Vec<(String, Vec<Stack>)>> {
    let mut groups: Vec<(String, Vec<Stack>)> = Vec::new();
    for stack in state.store.all_stacks().await? {
        if !stack.vcs_integration_id.is_empty() && stack.vcs_integration_id != integration_id {
            continue;
        }
        if !repository_matches(&stack.repository, repo) {
            continue;
        }
        match groups.iter_mut().find(|(r, _)| *r == stack.repository) {
            Some((_, v)) => v.push(stack),
            None => groups.push((stack.repository.clone(), vec![stack])),
        }
    }
    Ok(groups)
}

/// Lets the scheduler know the cairn.toml paths of the pushed commit from its parent's
/// ([`crate::deployments::learn_config_paths`]) when `files` is every path that differs between
/// `before` and `after`: git's diff, or the payload's lists of a GitHub push that did not
/// rewrite history (a forced push's commits do not account for what it replaced, and GitLab
/// does not say whether a push was forced).
fn learn_config_paths(p: &PushEvent, groups: &[(String, Vec<Stack>)], files: &[String]) {
    let from_payload = p.payload_files().is_some();
    if is_zero_sha(&p.before) || (from_payload && (p.provider != Provider::GitHub || p.forced)) {
        return;
    }
    for (repository, _) in groups {
        crate::deployments::learn_config_paths(repository, &p.before, &p.after, files);
    }
}

/// From the payload when complete, else `git diff` in the server's cache of a repository it
/// can fetch by itself.
async fn push_files(
    state: &AppState,
    p: &PushEvent,
    groups: &[(String, Vec<Stack>)],
) -> Result<Vec<String>> {
    if let Some(files) = p.payload_files() {
        return Ok(files);
    }
    let mut sources = Vec::new();
    for (r, _) in groups {
        for s in fetch_sources(r, &p.repository.clone_url) {
            if !sources.contains(&s) {
                sources.push(s);
            }
        }
    }
    if sources.is_empty() {
        return Err(ServerError::Unavailable(format!(
            "the payload of {} does not list every file and {} cannot be fetched",
            p.after, p.repository.full_name
        )));
    }
    let root = state.config.data_dir.join("git-cache");
    let p = p.clone();
    blocking(move || {
        let (dir, _) = fetch_any(&root, &sources, &p.repository.full_name)?;
        cairn_vcs::push_affected_files(&p, Some(&dir))
            .map_err(|e| ServerError::Unavailable(e.to_string()))
    })
    .await
}

/// Where the server can fetch an event's repository from, best first: local locations (the
/// stack's, then the payload's clone URL — internal platforms and tests hand local
/// repositories over that way), then the stack's remote location (https, ssh, scp-like). A
/// hosted clone URL from a payload is never fetched: the stack's owner chose where to fetch.
fn fetch_sources(stack_repository: &str, payload_clone_url: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in [stack_repository, payload_clone_url] {
        if super::cache::is_local(r) {
            out.push(r.to_string());
        }
    }
    if super::cache::is_fetchable(stack_repository) && !out.iter().any(|r| r == stack_repository) {
        out.push(stack_repository.to_string());
    }
    out
}

/// The bare cache of the first of `sources` that fetches; the last error when none does.
fn fetch_any(root: &Path, sources: &[String], what: &str) -> Result<(PathBuf, String)> {
    let mut last = None;
    for src in sources {
        match super::cache::fetch(root, src) {
            Ok(dir) => return Ok((dir, src.clone())),
            Err(e) => {
                tracing::warn!(vcs.source = %src, error = %e, "fetching {what}");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        ServerError::Unavailable(format!(
            "{what} names no location git can fetch (use a URL or path as the stack's repository)"
        ))
    }))
}

/// Diff, divergence and head metadata of a pull request, from the server's bare cache of the
/// repository (see [`fetch_sources`]). A head commit the mirrored branches do not have (a
/// fork's, or a branch deleted since) is fetched from the provider's pull-request ref
/// (`refs/pull/<n>/head` on GitHub, `refs/merge-requests/<n>/head` on GitLab).
async fn pr_facts(state: &AppState, repository: &str, pr: &PullRequestEvent) -> Result<PrFacts> {
    let sources = fetch_sources(repository, &pr.repository.clone_url);
    let root = state.config.data_dir.join("git-cache");
    let pr = pr.clone();
    blocking(move || {
        let (dir, source) = fetch_any(&root, &sources, &pr.repository.full_name)?;
        if !super::cache::has_commit(&dir, &pr.head.sha) {
            let pull_ref = match pr.provider {
                Provider::GitHub => format!("refs/pull/{}/head", pr.number),
                Provider::GitLab => format!("refs/merge-requests/{}/head", pr.number),
            };
            super::cache::fetch_ref(&dir, &source, &pull_ref).map_err(|e| {
                ServerError::Unavailable(format!(
                    "head commit {} of pull request {} is on no branch of {source} and its \
                     {pull_ref} cannot be fetched: {e}",
                    pr.head.sha, pr.number
                ))
            })?;
        }
        let base = if pr.base.sha.is_empty() {
            format!("refs/heads/{}", pr.base.branch)
        } else {
            pr.base.sha.clone()
        };
        let g = |e: VcsError| ServerError::Unavailable(e.to_string());
        let merge_commit = pr
            .merge_commit
            .as_deref()
            .filter(|_| pr.merged)
            .and_then(|sha| git::commit_meta(&dir, sha).ok());
        Ok(PrFacts {
            diff: git::merge_base_diff(&dir, &base, &pr.head.sha).map_err(g)?,
            undiverged: git::is_ancestor(&dir, &base, &pr.head.sha).ok(),
            head_commit: git::commit_meta(&dir, &pr.head.sha).ok(),
            base_commit: git::commit_meta(&dir, &base).ok(),
            merge_commit,
            ..PrFacts::default()
        })
    })
    .await
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServerError::Internal(format!("git task: {e}")))?
}
