//! GitLab payloads (`X-Gitlab-Event`: Push Hook, Tag Push Hook, Merge Request Hook, Note Hook).

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::{Result, VcsError};
use crate::event::*;
use crate::github::{is_fork, owner_of};
use crate::nn;

const PROVIDER: Provider = Provider::GitLab;

/// The GitLab event types (`X-Gitlab-Event` values) this crate understands.
pub const EVENTS: &[&str] = &[
    "Push Hook",
    "Tag Push Hook",
    "Merge Request Hook",
    "Note Hook",
];

pub(crate) fn parse(event: &str, body: &[u8]) -> Result<VcsEvent> {
    match event {
        "Push Hook" | "Tag Push Hook" => push(decode(event, body)?),
        "Merge Request Hook" => merge_request(decode(event, body)?),
        "Note Hook" => note(decode(event, body)?),
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

#[derive(Deserialize)]
struct Project {
    path_with_namespace: String,
    #[serde(default, deserialize_with = "nn")]
    git_http_url: String,
    #[serde(default, deserialize_with = "nn")]
    web_url: String,
    #[serde(default, deserialize_with = "nn")]
    default_branch: String,
}

impl From<Project> for Repository {
    fn from(p: Project) -> Self {
        Repository {
            owner: owner_of(&p.path_with_namespace),
            full_name: p.path_with_namespace,
            clone_url: p.git_http_url,
            html_url: p.web_url,
            default_branch: p.default_branch,
        }
    }
}

#[derive(Deserialize, Default)]
struct User {
    #[serde(default, deserialize_with = "nn")]
    username: String,
    #[serde(default, deserialize_with = "nn")]
    name: String,
    #[serde(default, deserialize_with = "nn")]
    email: String,
}

impl From<User> for Person {
    fn from(u: User) -> Self {
        Person {
            login: u.username,
            name: u.name,
            email: u.email,
        }
    }
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
struct Push {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    #[serde(default)]
    checkout_sha: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default, deserialize_with = "nn")]
    user_name: String,
    #[serde(default, deserialize_with = "nn")]
    user_username: String,
    #[serde(default, deserialize_with = "nn")]
    user_email: String,
    project: Project,
    #[serde(default, deserialize_with = "nn")]
    commits: Vec<Commit>,
    #[serde(default)]
    total_commits_count: Option<u64>,
}

fn push(p: Push) -> Result<VcsEvent> {
    let commits: Vec<CommitInfo> = p.commits.into_iter().map(CommitInfo::from).collect();
    let head_id = p
        .checkout_sha
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or(&p.after);
    let head_commit = commits.iter().find(|c| c.id == head_id).cloned();
    Ok(VcsEvent::Push(Box::new(PushEvent {
        provider: PROVIDER,
        repository: p.project.into(),
        git_ref: GitRef::parse(&p.git_ref),
        full_ref: p.git_ref,
        created: is_zero_sha(&p.before),
        deleted: is_zero_sha(&p.after),
        before: p.before,
        after: p.after,
        // GitLab does not say; a forced push is indistinguishable here.
        forced: false,
        commits,
        total_commits: p.total_commits_count,
        head_commit,
        pusher: Person {
            login: p.user_username,
            name: p.user_name,
            email: p.user_email,
        },
        base_branch: None,
        message: p.message.filter(|m| !m.is_empty()),
    })))
}

#[derive(Deserialize)]
struct Label {
    #[serde(default, deserialize_with = "nn")]
    title: String,
}

#[derive(Deserialize)]
struct LabelChange {
    #[serde(default, deserialize_with = "nn")]
    previous: Vec<Label>,
    #[serde(default, deserialize_with = "nn")]
    current: Vec<Label>,
}

#[derive(Deserialize, Default)]
struct Changes {
    #[serde(default)]
    labels: Option<LabelChange>,
}

#[derive(Deserialize)]
struct Mr {
    iid: u64,
    #[serde(default, deserialize_with = "nn")]
    title: String,
    #[serde(default, deserialize_with = "nn")]
    state: String,
    #[serde(default)]
    action: Option<String>,
    source_branch: String,
    target_branch: String,
    #[serde(default)]
    source_project_id: Option<u64>,
    #[serde(default)]
    target_project_id: Option<u64>,
    #[serde(default)]
    source: Option<Project>,
    #[serde(default)]
    target: Option<Project>,
    #[serde(default)]
    last_commit: Option<Commit>,
    #[serde(default, deserialize_with = "nn")]
    labels: Vec<Label>,
    #[serde(default)]
    draft: Option<bool>,
    #[serde(default)]
    work_in_progress: Option<bool>,
    #[serde(default)]
    merge_status: Option<String>,
    #[serde(default)]
    detailed_merge_status: Option<String>,
    #[serde(default)]
    oldrev: Option<String>,
    #[serde(default, deserialize_with = "nn")]
    updated_at: String,
    #[serde(default)]
    merge_commit_sha: Option<String>,
}

#[derive(Deserialize)]
struct MergeRequestPayload {
    #[serde(default)]
    user: Option<User>,
    project: Project,
    object_attributes: Mr,
    #[serde(default, deserialize_with = "nn")]
    labels: Vec<Label>,
    #[serde(default, deserialize_with = "nn")]
    changes: Changes,
}

fn side(branch: String, sha: String, project: Option<Project>) -> PrSide {
    match project {
        Some(p) => {
            let r = Repository::from(p);
            PrSide {
                branch,
                sha,
                repo_full_name: r.full_name,
                owner: r.owner,
                clone_url: r.clone_url,
            }
        }
        None => PrSide {
            branch,
            sha,
            ..PrSide::default()
        },
    }
}

/// `(label added or removed, action)` from an `update`'s label changes.
fn label_change(changes: &Changes) -> Option<(String, PrAction)> {
    let c = changes.labels.as_ref()?;
    let had = |l: &Label, set: &[Label]| set.iter().any(|x| x.title == l.title);
    if let Some(added) = c.current.iter().find(|l| !had(l, &c.previous)) {
        return Some((added.title.clone(), PrAction::Labeled));
    }
    c.previous
        .iter()
        .find(|l| !had(l, &c.current))
        .map(|removed| (removed.title.clone(), PrAction::Unlabeled))
}

/// Builds the normalized pull request from an MR object (the `object_attributes` of a Merge
/// Request Hook, or the `merge_request` of a Note Hook).
fn merge_request_event(
    mr: Mr,
    repository: Repository,
    sender: Person,
    top_labels: Vec<Label>,
    changes: &Changes,
) -> PullRequestEvent {
    let raw_action = mr.action.clone().unwrap_or_default();
    let mut label = None;
    let mut approved = None;
    let merged = mr.state == "merged" || raw_action == "merge";
    let action = match raw_action.as_str() {
        "open" => PrAction::Opened,
        "reopen" => PrAction::Reopened,
        "close" | "merge" => PrAction::Closed,
        // `oldrev` is only present when the update pushed code.
        "update" if mr.oldrev.as_deref().is_some_and(|r| !r.is_empty()) => PrAction::Synchronize,
        "update" => match label_change(changes) {
            Some((l, a)) => {
                label = Some(l);
                a
            }
            None => PrAction::Edited,
        },
        "approved" | "approval" => {
            approved = Some(true);
            PrAction::Other("approved".to_string())
        }
        "unapproved" => {
            approved = Some(false);
            PrAction::Other("unapproved".to_string())
        }
        other => PrAction::Other(other.to_string()),
    };
    let head_sha = mr
        .last_commit
        .as_ref()
        .map(|c| c.id.clone())
        .unwrap_or_default();
    let head = side(mr.source_branch, head_sha, mr.source);
    let base = side(mr.target_branch, String::new(), mr.target);
    let fork = match (mr.source_project_id, mr.target_project_id) {
        (Some(s), Some(t)) => s != t,
        _ => is_fork(&head, &base),
    };
    let labels: Vec<String> = if mr.labels.is_empty() {
        top_labels.into_iter().map(|l| l.title).collect()
    } else {
        mr.labels.into_iter().map(|l| l.title).collect()
    };
    let detailed = mr.detailed_merge_status.clone();
    let mergeable = match (detailed.as_deref(), mr.merge_status.as_deref()) {
        (Some("mergeable"), _) => Some(true),
        // Still computing: GitLab has not decided yet.
        (Some("checking" | "unchecked" | "preparing"), _) => None,
        (Some(_), _) => Some(false),
        (None, Some("can_be_merged")) => Some(true),
        (None, Some("cannot_be_merged")) => Some(false),
        _ => None,
    };
    let undiverged = match detailed.as_deref() {
        Some("need_rebase") => Some(false),
        Some("mergeable") => Some(true),
        _ => None,
    };
    let author = (raw_action == "open").then(|| sender.clone());
    PullRequestEvent {
        provider: PROVIDER,
        action,
        number: mr.iid,
        title: mr.title,
        author,
        sender,
        repository,
        head,
        base,
        draft: mr.draft.or(mr.work_in_progress).unwrap_or(false),
        closed: matches!(mr.state.as_str(), "closed" | "merged"),
        merged,
        labels,
        label,
        fork,
        mergeable,
        merge_state: detailed.or(mr.merge_status),
        undiverged,
        approved,
        before: mr.oldrev.filter(|r| !r.is_empty()),
        updated_at_ns: timestamp_ns(&mr.updated_at),
        head_commit: mr.last_commit.map(CommitInfo::from),
        merge_commit: mr.merge_commit_sha.filter(|s| !s.is_empty()),
    }
}

fn merge_request(p: MergeRequestPayload) -> Result<VcsEvent> {
    let sender = p.user.map(Person::from).unwrap_or_default();
    Ok(VcsEvent::PullRequest(Box::new(merge_request_event(
        p.object_attributes,
        p.project.into(),
        sender,
        p.labels,
        &p.changes,
    ))))
}

#[derive(Deserialize)]
struct Note {
    #[serde(default)]
    id: u64,
    #[serde(default, deserialize_with = "nn")]
    note: String,
    #[serde(default, deserialize_with = "nn")]
    noteable_type: String,
    /// `create` or `update` (GitLab 16.11+); absent before, when only creation was sent.
    #[serde(default)]
    action: Option<String>,
}

#[derive(Deserialize)]
struct NotePayload {
    #[serde(default)]
    user: Option<User>,
    project: Project,
    object_attributes: Note,
    #[serde(default)]
    merge_request: Option<Mr>,
}

fn note(p: NotePayload) -> Result<VcsEvent> {
    let repository = Repository::from(p.project);
    let ignored = |reason: String| {
        Ok(VcsEvent::Ignored(IgnoredEvent {
            provider: PROVIDER,
            event: "Note Hook".to_string(),
            reason,
            repository: Some(repository.clone()),
        }))
    };
    let note = p.object_attributes;
    let Some(mr) = p
        .merge_request
        .filter(|_| note.noteable_type == "MergeRequest")
    else {
        return ignored(format!(
            "comment on a {} rather than a merge request",
            if note.noteable_type.is_empty() {
                "non-merge-request object"
            } else {
                note.noteable_type.as_str()
            }
        ));
    };
    if let Some(action) = note.action.as_deref().filter(|a| *a != "create") {
        return ignored(format!(
            "comment {action} on merge request !{}: only new comments are acted on",
            mr.iid
        ));
    }
    let author = p.user.map(Person::from).unwrap_or_default();
    let pr = merge_request_event(
        mr,
        repository.clone(),
        author.clone(),
        Vec::new(),
        &Changes::default(),
    );
    Ok(VcsEvent::PullRequestComment(Box::new(CommentEvent {
        provider: PROVIDER,
        pr_number: pr.number,
        body: note.note,
        comment_id: note.id,
        author,
        pr_title: pr.title.clone(),
        pr_labels: pr.labels.clone(),
        // Note hooks carry only the author's numeric id.
        pr_author: Person::default(),
        pull_request: Some(Box::new(PullRequestEvent {
            action: PrAction::Other("commented".to_string()),
            author: None,
            ..pr
        })),
        repository,
    })))
}
