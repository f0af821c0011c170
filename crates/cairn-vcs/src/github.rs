//! GitHub payloads (`X-GitHub-Event`: push, pull_request, issue_comment, ping).
//!
//! The raw structs name only the fields Cairn reads; every field GitHub documents as nullable
//! or absent in some variants is optional here, so that any real delivery parses.

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::{Result, VcsError};
use crate::event::*;
use crate::nn;

const PROVIDER: Provider = Provider::GitHub;

/// The GitHub event types this crate understands.
pub const EVENTS: &[&str] = &["push", "pull_request", "issue_comment", "ping"];

pub(crate) fn parse(event: &str, body: &[u8]) -> Result<VcsEvent> {
    match event {
        "ping" => ping(decode(event, body)?),
        "push" => push(decode(event, body)?),
        "pull_request" => pull_request(decode(event, body)?),
        "issue_comment" => issue_comment(decode(event, body)?),
        other => Err(VcsError::UnknownEvent {
            provider: PROVIDER,
            event: other.to_string(),
        }),
    }
}

fn decode<T: DeserializeOwned>(event: &str, body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| VcsError::MalformedPayload {
        provider: PROVIDER,
        event: event.to_string(),
        message: e.to_string(),
    })
}

#[derive(Deserialize, Default)]
struct User {
    #[serde(default, deserialize_with = "nn")]
    login: String,
    #[serde(default, deserialize_with = "nn")]
    name: String,
    #[serde(default, deserialize_with = "nn")]
    email: String,
    /// Commit authors carry `username` rather than `login`.
    #[serde(default, deserialize_with = "nn")]
    username: String,
}

impl From<User> for Person {
    fn from(u: User) -> Self {
        Person {
            login: if u.login.is_empty() {
                u.username
            } else {
                u.login
            },
            name: u.name,
            email: u.email,
        }
    }
}

#[derive(Deserialize)]
struct Repo {
    full_name: String,
    #[serde(default)]
    owner: Option<User>,
    #[serde(default, deserialize_with = "nn")]
    clone_url: String,
    #[serde(default, deserialize_with = "nn")]
    html_url: String,
    #[serde(default, deserialize_with = "nn")]
    default_branch: String,
}

impl From<Repo> for Repository {
    fn from(r: Repo) -> Self {
        let owner = r
            .owner
            .map(|o| if o.login.is_empty() { o.name } else { o.login })
            .filter(|o| !o.is_empty())
            .unwrap_or_else(|| owner_of(&r.full_name));
        Repository {
            full_name: r.full_name,
            owner,
            clone_url: r.clone_url,
            html_url: r.html_url,
            default_branch: r.default_branch,
        }
    }
}

pub(crate) fn owner_of(full_name: &str) -> String {
    full_name
        .rsplit_once('/')
        .map(|(o, _)| o.to_string())
        .unwrap_or_default()
}

#[derive(Deserialize)]
struct Commit {
    id: String,
    #[serde(default, deserialize_with = "nn")]
    message: String,
    #[serde(default, deserialize_with = "nn")]
    timestamp: String,
    #[serde(default)]
    author: Option<User>,
    #[serde(default, deserialize_with = "nn")]
    added: Vec<String>,
    #[serde(default, deserialize_with = "nn")]
    modified: Vec<String>,
    #[serde(default, deserialize_with = "nn")]
    removed: Vec<String>,
}

impl From<Commit> for CommitInfo {
    fn from(c: Commit) -> Self {
        CommitInfo {
            id: c.id,
            message: c.message,
            timestamp_ns: timestamp_ns(&c.timestamp),
            author: c.author.map(Person::from).unwrap_or_default(),
            added: c.added,
            modified: c.modified,
            removed: c.removed,
        }
    }
}

#[derive(Deserialize)]
struct Ping {
    #[serde(default, deserialize_with = "nn")]
    zen: String,
    #[serde(default)]
    hook_id: Option<u64>,
    #[serde(default)]
    repository: Option<Repo>,
    #[serde(default)]
    sender: Option<User>,
}

fn ping(p: Ping) -> Result<VcsEvent> {
    Ok(VcsEvent::Ping(PingEvent {
        provider: PROVIDER,
        zen: p.zen,
        hook_id: p.hook_id,
        repository: p.repository.map(Repository::from),
        sender: p.sender.map(Person::from).unwrap_or_default(),
    }))
}

#[derive(Deserialize)]
struct Push {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    #[serde(default)]
    created: bool,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    forced: bool,
    #[serde(default)]
    base_ref: Option<String>,
    #[serde(default, deserialize_with = "nn")]
    commits: Vec<Commit>,
    #[serde(default)]
    head_commit: Option<Commit>,
    #[serde(default)]
    pusher: Option<User>,
    repository: Repo,
}

fn push(p: Push) -> Result<VcsEvent> {
    Ok(VcsEvent::Push(Box::new(PushEvent {
        provider: PROVIDER,
        repository: p.repository.into(),
        git_ref: GitRef::parse(&p.git_ref),
        full_ref: p.git_ref,
        created: p.created || is_zero_sha(&p.before),
        deleted: p.deleted || is_zero_sha(&p.after),
        before: p.before,
        after: p.after,
        forced: p.forced,
        commits: p.commits.into_iter().map(CommitInfo::from).collect(),
        total_commits: None,
        head_commit: p.head_commit.map(CommitInfo::from),
        pusher: p.pusher.map(Person::from).unwrap_or_default(),
        base_branch: p
            .base_ref
            .and_then(|r| GitRef::parse(&r).branch().map(str::to_string)),
        message: None,
    })))
}

#[derive(Deserialize)]
struct Label {
    #[serde(default, deserialize_with = "nn")]
    name: String,
}

#[derive(Deserialize)]
struct Side {
    #[serde(rename = "ref")]
    branch: String,
    sha: String,
    #[serde(default)]
    user: Option<User>,
    /// Null when the head repository (a fork) was deleted.
    #[serde(default)]
    repo: Option<Repo>,
}

impl Side {
    fn into_side(self) -> PrSide {
        let user = self.user.map(|u| u.login).unwrap_or_default();
        match self.repo {
            Some(r) => {
                let r = Repository::from(r);
                PrSide {
                    branch: self.branch,
                    sha: self.sha,
                    owner: if r.owner.is_empty() { user } else { r.owner },
                    repo_full_name: r.full_name,
                    clone_url: r.clone_url,
                }
            }
            None => PrSide {
                branch: self.branch,
                sha: self.sha,
                owner: user,
                repo_full_name: String::new(),
                clone_url: String::new(),
            },
        }
    }
}

#[derive(Deserialize)]
struct Pr {
    #[serde(default, deserialize_with = "nn")]
    title: String,
    #[serde(default)]
    user: Option<User>,
    #[serde(default)]
    draft: Option<bool>,
    #[serde(default)]
    merged: Option<bool>,
    #[serde(default, deserialize_with = "nn")]
    state: String,
    #[serde(default, deserialize_with = "nn")]
    labels: Vec<Label>,
    #[serde(default)]
    mergeable: Option<bool>,
    #[serde(default)]
    mergeable_state: Option<String>,
    #[serde(default, deserialize_with = "nn")]
    updated_at: String,
    #[serde(default)]
    merge_commit_sha: Option<String>,
    head: Side,
    base: Side,
}

#[derive(Deserialize)]
struct PullRequestPayload {
    action: String,
    number: u64,
    pull_request: Pr,
    repository: Repo,
    #[serde(default)]
    sender: Option<User>,
    #[serde(default)]
    label: Option<Label>,
    #[serde(default)]
    before: Option<String>,
}

/// GitHub's `mergeable_state` says whether the head is behind the base only in some states;
/// elsewhere the payload does not tell and the caller must ask git.
fn github_undiverged(state: Option<&str>) -> Option<bool> {
    match state? {
        "behind" => Some(false),
        "clean" | "unstable" | "has_hooks" => Some(true),
        _ => None,
    }
}

fn pull_request(p: PullRequestPayload) -> Result<VcsEvent> {
    let pr = p.pull_request;
    let action = match p.action.as_str() {
        "opened" => PrAction::Opened,
        "reopened" => PrAction::Reopened,
        "synchronize" => PrAction::Synchronize,
        "labeled" => PrAction::Labeled,
        "unlabeled" => PrAction::Unlabeled,
        "edited" => PrAction::Edited,
        "closed" => PrAction::Closed,
        other => PrAction::Other(other.to_string()),
    };
    let repository = Repository::from(p.repository);
    let head = pr.head.into_side();
    let base = pr.base.into_side();
    let fork = is_fork(&head, &base);
    let merge_state = pr.mergeable_state;
    // Spacelift's `mergeable` on GitHub means no conflicts *and* branch protection satisfied;
    // GitHub's own `mergeable` only covers conflicts, `mergeable_state` the rest.
    let mergeable = pr
        .mergeable
        .map(|m| m && !matches!(merge_state.as_deref(), Some("blocked" | "dirty" | "draft")));
    Ok(VcsEvent::PullRequest(Box::new(PullRequestEvent {
        provider: PROVIDER,
        action,
        number: p.number,
        title: pr.title,
        author: pr.user.map(Person::from),
        sender: p.sender.map(Person::from).unwrap_or_default(),
        repository,
        head,
        base,
        draft: pr.draft.unwrap_or(false),
        closed: pr.state == "closed",
        merged: pr.merged.unwrap_or(false),
        labels: pr.labels.into_iter().map(|l| l.name).collect(),
        label: p.label.map(|l| l.name),
        fork,
        mergeable,
        undiverged: github_undiverged(merge_state.as_deref()),
        merge_state,
        approved: None,
        before: p.before,
        updated_at_ns: timestamp_ns(&pr.updated_at),
        head_commit: None,
        merge_commit: pr.merge_commit_sha.filter(|s| !s.is_empty()),
    })))
}

/// A head in another repository than the base is a fork; so is a head whose repository no
/// longer exists (a deleted fork), since its code cannot be attributed to the base's owner.
pub(crate) fn is_fork(head: &PrSide, base: &PrSide) -> bool {
    head.repo_full_name.is_empty()
        || !head
            .repo_full_name
            .eq_ignore_ascii_case(&base.repo_full_name)
        || !head.owner.eq_ignore_ascii_case(&base.owner)
}

#[derive(Deserialize)]
struct Issue {
    number: u64,
    #[serde(default, deserialize_with = "nn")]
    title: String,
    #[serde(default)]
    user: Option<User>,
    #[serde(default, deserialize_with = "nn")]
    labels: Vec<Label>,
    /// Present (an object) only when the issue is a pull request.
    #[serde(default)]
    pull_request: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Comment {
    id: u64,
    #[serde(default, deserialize_with = "nn")]
    body: String,
    #[serde(default)]
    user: Option<User>,
}

#[derive(Deserialize)]
struct IssueComment {
    action: String,
    issue: Issue,
    comment: Comment,
    repository: Repo,
}

fn issue_comment(c: IssueComment) -> Result<VcsEvent> {
    let repository = Repository::from(c.repository);
    let ignored = |reason: String| {
        Ok(VcsEvent::Ignored(IgnoredEvent {
            provider: PROVIDER,
            event: "issue_comment".to_string(),
            reason,
            repository: Some(repository.clone()),
        }))
    };
    if c.issue.pull_request.as_ref().is_none_or(|v| v.is_null()) {
        return ignored(format!(
            "comment on issue #{} which is not a pull request",
            c.issue.number
        ));
    }
    if c.action != "created" {
        return ignored(format!(
            "comment {} on pull request #{}: only new comments are acted on",
            c.action, c.issue.number
        ));
    }
    Ok(VcsEvent::PullRequestComment(Box::new(CommentEvent {
        provider: PROVIDER,
        pr_number: c.issue.number,
        body: c.comment.body,
        comment_id: c.comment.id,
        author: c.comment.user.map(Person::from).unwrap_or_default(),
        pull_request: None,
        pr_title: c.issue.title,
        pr_labels: c.issue.labels.into_iter().map(|l| l.name).collect(),
        pr_author: c.issue.user.map(Person::from).unwrap_or_default(),
        repository,
    })))
}
