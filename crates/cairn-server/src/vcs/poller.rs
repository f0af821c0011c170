//! Plain Git: repositories without webhooks are polled with `git ls-remote`; every changed
//! branch or tag becomes a push event for [`super::ingest::push_to_stacks`].
//!
//! Polled: the repositories of stacks bound to a `GIT` integration (its
//! `poll_interval_seconds`; 0 = never) and of stacks without integration whose repository is a
//! local path or `file://` URL (`git_poll_interval` of the configuration). The first time a
//! repository is seen its refs are only recorded, so that existing branches start nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::Stack;
use cairn_store::GitRefRecord;
use cairn_vcs::{git, CommitInfo, GitRef, Person, Provider, PushEvent, Repository};

use super::cache;
use super::ingest::{blocking, push_to_stacks, Outcome};
use crate::error::Result;
use crate::state::AppState;

const ZERO: &str = "0000000000000000000000000000000000000000";

pub async fn run_loop(state: Arc<AppState>) {
    let mut next_due: HashMap<String, Instant> = HashMap::new();
    let mut last_error: HashMap<String, String> = HashMap::new();
    loop {
        if let Err(e) = poll_due(&state, &mut next_due, &mut last_error).await {
            tracing::warn!(error = %e, "polling git repositories");
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(state.config.git_poll_interval) => {}
        }
    }
}

/// Repositories to poll and their interval.
async fn polled(state: &AppState) -> Result<Vec<(String, Duration, Vec<Stack>)>> {
    let integrations: HashMap<String, _> = state
        .store
        .list_vcs_integrations()
        .await?
        .into_iter()
        .map(|i| (i.id.clone(), i))
        .collect();
    let mut out: Vec<(String, Duration, Vec<Stack>)> = Vec::new();
    for stack in state.store.all_stacks().await? {
        let interval = if stack.vcs_integration_id.is_empty() {
            cache::is_local(&stack.repository).then_some(state.config.git_poll_interval)
        } else {
            integrations
                .get(&stack.vcs_integration_id)
                .filter(|i| i.provider == "GIT" && i.poll_interval_seconds > 0)
                .map(|i| Duration::from_secs(i.poll_interval_seconds as u64))
        };
        let Some(interval) = interval else { continue };
        match out.iter_mut().find(|(r, _, _)| *r == stack.repository) {
            Some((_, iv, stacks)) => {
                *iv = (*iv).min(interval);
                stacks.push(stack);
            }
            None => out.push((stack.repository.clone(), interval, vec![stack])),
        }
    }
    Ok(out)
}

/// `last_error` keeps each repository's last failure so that one that stays unreachable is
/// reported once, not at every poll.
async fn poll_due(
    state: &AppState,
    next_due: &mut HashMap<String, Instant>,
    last_error: &mut HashMap<String, String>,
) -> Result<()> {
    let now = Instant::now();
    for (repo, interval, stacks) in polled(state).await? {
        if next_due.get(&repo).is_some_and(|due| *due > now) {
            continue;
        }
        next_due.insert(repo.clone(), now + interval);
        match poll_one(state, &repo, stacks).await {
            Ok(_) => {
                if last_error.remove(&repo).is_some() {
                    tracing::info!(repository = %repo, "git poll works again");
                }
            }
            Err(e) => {
                let msg = e.to_string();
                if last_error.get(&repo) != Some(&msg) {
                    tracing::warn!(repository = %repo, error = %msg, "git poll failed");
                    last_error.insert(repo.clone(), msg);
                }
            }
        }
    }
    Ok(())
}

/// Polls one repository: what changed since the stored refs becomes push events.
pub async fn poll_one(state: &AppState, repo: &str, stacks: Vec<Stack>) -> Result<Outcome> {
    let mut out = Outcome::default();
    let r = repo.to_string();
    let now = blocking(move || cache::ls_remote(&r)).await?;
    let old = state.store.git_refs(repo).await?;
    if old.is_empty() {
        state.store.set_git_refs(repo, &now).await?;
        return Ok(out);
    }
    let old: HashMap<&str, &str> = old
        .iter()
        .map(|r| (r.name.as_str(), r.sha.as_str()))
        .collect();
    let changed: Vec<GitRefRecord> = now
        .iter()
        .filter(|r| old.get(r.name.as_str()) != Some(&r.sha.as_str()))
        .cloned()
        .collect();
    if changed.is_empty() {
        if now.len() != old.len() {
            state.store.set_git_refs(repo, &now).await?;
        }
        return Ok(out);
    }
    // New branches are compared with the head of the branch the stacks track.
    let tracked = stacks.first().map(|s| s.branch.clone()).unwrap_or_default();
    let tracked_head = now
        .iter()
        .find(|r| r.name == format!("refs/heads/{tracked}"))
        .map(|r| r.sha.clone());
    let before_of: Vec<Option<String>> = changed
        .iter()
        .map(|r| old.get(r.name.as_str()).map(|s| s.to_string()))
        .collect();
    let root = state.config.data_dir.join("git-cache");
    let r = repo.to_string();
    let events = blocking(move || {
        let dir = cache::fetch(&root, &r)?;
        let mut events = Vec::new();
        for (rf, before) in changed.iter().zip(before_of) {
            events.push(push_event(&dir, &r, rf, before, tracked_head.as_deref())?);
        }
        Ok(events)
    })
    .await?;
    let _one = state.vcs.processing.lock().await;
    let group = [(repo.to_string(), stacks)];
    for (event, files) in events {
        push_to_stacks(state, &group, &event, files, &mut out).await?;
    }
    drop(_one);
    state.store.set_git_refs(repo, &now).await?;
    if !out.run_ids.is_empty() {
        tracing::info!(repository = %repo, runs = ?out.run_ids, "git poll started runs");
    }
    Ok(out)
}

fn push_event(
    dir: &std::path::Path,
    repo: &str,
    rf: &GitRefRecord,
    before: Option<String>,
    tracked_head: Option<&str>,
) -> Result<(PushEvent, Vec<String>)> {
    let g = |e: cairn_vcs::VcsError| crate::error::ServerError::Unavailable(e.to_string());
    let after = rf.sha.clone();
    let base = before
        .clone()
        .or_else(|| tracked_head.map(str::to_string))
        .filter(|b| *b != after);
    let files = match &base {
        Some(b) if git::is_ancestor(dir, b, &after).is_ok() => {
            git::changed_files(dir, b, &after).map_err(g)?
        }
        _ => git::commit_files(dir, &after).map_err(g)?,
    };
    let meta = git::commit_meta(dir, &after).map_err(g)?;
    let name = repo
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(repo)
        .trim_end_matches(".git")
        .to_string();
    let event = PushEvent {
        provider: Provider::GitHub,
        repository: Repository {
            full_name: name,
            owner: String::new(),
            clone_url: repo.to_string(),
            html_url: String::new(),
            default_branch: String::new(),
        },
        git_ref: GitRef::parse(&rf.name),
        full_ref: rf.name.clone(),
        created: before.is_none(),
        before: before.unwrap_or_else(|| ZERO.to_string()),
        after: after.clone(),
        deleted: false,
        forced: false,
        commits: Vec::new(),
        total_commits: None,
        head_commit: Some(CommitInfo {
            id: after,
            message: meta.message.clone(),
            timestamp_ns: meta.authored_at_ns,
            author: Person {
                login: String::new(),
                name: meta.author_name.clone(),
                email: meta.author_email.clone(),
            },
            ..CommitInfo::default()
        }),
        pusher: Person::default(),
        base_branch: None,
        message: None,
    };
    Ok((event, files))
}
