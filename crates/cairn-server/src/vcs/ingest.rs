//! From a delivery to stored event (before the 2xx), and from stored event to runs.

use std::sync::Arc;

use cairn_core::{Commit, Stack};
use cairn_store::{StoreError, VcsEventRecord, VcsIntegration};
use cairn_vcs::{
    git, is_zero_sha, PrAction, PrFacts, Provider, PullRequestEvent, PushEvent, PushPolicyDocs,
    Repository, VcsError, VcsEvent,
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
            let files = push_files(state, &p, &groups).await;
            let files = files.unwrap_or_else(|e| {
                out.notes.push(format!("affected files unknown: {e}"));
                Vec::new()
            });
            push_to_stacks(state, &groups, &p, files, &mut out).await?;
        }
        VcsEvent::PullRequest(pr) => {
            if !matches!(
                pr.action,
                PrAction::Opened | PrAction::Reopened | PrAction::Synchronize
            ) {
                out.notes.push(format!(
                    "pull request {}: no run for action {}",
                    pr.number,
                    pr.action.as_str()
                ));
                return Ok(out);
            }
            let groups = matching_stacks(state, &rec.integration_id, &pr.repository).await?;
            for (repository, stacks) in &groups {
                let facts = pr_facts(state, repository, &pr).await.unwrap_or_else(|e| {
                    out.notes.push(format!("pull request diff unknown: {e}"));
                    PrFacts::default()
                });
                let mut docs = PushPolicyDocs::for_pull_request(&pr, &facts);
                if let Some(meta) = &facts.head_commit {
                    docs = docs.with_head_meta(meta);
                }
                let ev = stack_push(repository, docs, pr.fork);
                collect(state, stacks, &ev, &mut out).await?;
            }
        }
        VcsEvent::PullRequestComment(c) => out.notes.push(format!(
            "comment on pull request {}: comments start no runs",
            c.pr_number
        )),
        VcsEvent::Ping(_) | VcsEvent::Ignored(_) => out.notes.push("nothing to do".into()),
    }
    Ok(out)
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

fn fetchable<'a>(groups: &'a [(String, Vec<Stack>)], repo: &'a Repository) -> Option<&'a str> {
    groups
        .iter()
        .map(|(r, _)| r.as_str())
        .chain([repo.clone_url.as_str()])
        .find(|r| super::cache::is_local(r))
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
    let Some(repo) = fetchable(groups, &p.repository).map(str::to_string) else {
        return Err(ServerError::Unavailable(format!(
            "the payload of {} does not list every file and {} cannot be fetched",
            p.after, p.repository.full_name
        )));
    };
    let root = state.config.data_dir.join("git-cache");
    let p = p.clone();
    blocking(move || {
        let dir = super::cache::fetch(&root, &repo)?;
        cairn_vcs::push_affected_files(&p, Some(&dir))
            .map_err(|e| ServerError::Unavailable(e.to_string()))
    })
    .await
}

/// Diff, divergence and head metadata of a pull request, from the cache of `repository` (and
/// of the head's repository for forks).
async fn pr_facts(state: &AppState, repository: &str, pr: &PullRequestEvent) -> Result<PrFacts> {
    let local = [repository, pr.repository.clone_url.as_str()]
        .into_iter()
        .find(|r| super::cache::is_local(r))
        .map(str::to_string)
        .ok_or_else(|| {
            ServerError::Unavailable(format!("{} cannot be fetched", pr.repository.full_name))
        })?;
    let root = state.config.data_dir.join("git-cache");
    let pr = pr.clone();
    blocking(move || {
        // A fork's head must already be reachable in the base repository (GitHub keeps
        // `refs/pull/*`; plain repositories need the branch pushed there).
        let dir = super::cache::fetch(&root, &local)?;
        let base = if pr.base.sha.is_empty() {
            format!("refs/heads/{}", pr.base.branch)
        } else {
            pr.base.sha.clone()
        };
        let g = |e: VcsError| ServerError::Unavailable(e.to_string());
        Ok(PrFacts {
            diff: git::merge_base_diff(&dir, &base, &pr.head.sha).map_err(g)?,
            undiverged: git::is_ancestor(&dir, &base, &pr.head.sha).ok(),
            head_commit: git::commit_meta(&dir, &pr.head.sha).ok(),
            base_commit: git::commit_meta(&dir, &base).ok(),
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
