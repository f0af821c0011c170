//! The normalized event every provider's payload is turned into.

use serde::{Deserialize, Serialize};

/// Where a webhook comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    GitHub,
    GitLab,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::GitHub => "github",
            Provider::GitLab => "gitlab",
        }
    }

    /// The `vcs_integration.provider` value of push-policy inputs.
    pub fn policy_name(self) -> &'static str {
        match self {
            Provider::GitHub => "GITHUB",
            Provider::GitLab => "GITLAB",
        }
    }
}

/// One webhook delivery, normalized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VcsEvent {
    /// GitHub `ping` (sent when a hook is created).
    Ping(PingEvent),
    /// A branch or tag push (GitHub `push`, GitLab `Push Hook` / `Tag Push Hook`).
    Push(Box<PushEvent>),
    /// GitHub `pull_request`, GitLab `Merge Request Hook`.
    PullRequest(Box<PullRequestEvent>),
    /// A new comment on a pull request (GitHub `issue_comment`, GitLab `Note Hook`).
    PullRequestComment(Box<CommentEvent>),
    /// A well-formed delivery of a known type that needs no action (a comment on a plain issue,
    /// an edited or deleted comment). Acknowledge it and do nothing.
    Ignored(IgnoredEvent),
}

impl VcsEvent {
    pub fn provider(&self) -> Provider {
        match self {
            VcsEvent::Ping(e) => e.provider,
            VcsEvent::Push(e) => e.provider,
            VcsEvent::PullRequest(e) => e.provider,
            VcsEvent::PullRequestComment(e) => e.provider,
            VcsEvent::Ignored(e) => e.provider,
        }
    }

    /// The repository the event happened in (None for organization-level pings).
    pub fn repository(&self) -> Option<&Repository> {
        match self {
            VcsEvent::Ping(e) => e.repository.as_ref(),
            VcsEvent::Push(e) => Some(&e.repository),
            VcsEvent::PullRequest(e) => Some(&e.repository),
            VcsEvent::PullRequestComment(e) => Some(&e.repository),
            VcsEvent::Ignored(e) => e.repository.as_ref(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repository {
    /// `owner/name` (GitHub `full_name`, GitLab `path_with_namespace`).
    pub full_name: String,
    /// Owner login or group path (everything before the last `/` of `full_name` on GitLab).
    pub owner: String,
    /// HTTPS clone URL.
    pub clone_url: String,
    pub html_url: String,
    pub default_branch: String,
}

/// A user as the payload names them; any field may be empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    /// VCS login (GitHub `login` / `username`, GitLab `username`).
    pub login: String,
    pub name: String,
    pub email: String,
}

impl Person {
    /// Login if known, name otherwise (the push-policy `author` convention).
    pub fn display(&self) -> &str {
        if self.login.is_empty() {
            &self.name
        } else {
            &self.login
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "name", rename_all = "snake_case")]
pub enum GitRef {
    /// `refs/heads/<name>`.
    Branch(String),
    /// `refs/tags/<name>`.
    Tag(String),
    /// Any other ref, kept whole.
    Other(String),
}

impl GitRef {
    pub fn parse(full: &str) -> Self {
        if let Some(b) = full.strip_prefix("refs/heads/") {
            GitRef::Branch(b.to_string())
        } else if let Some(t) = full.strip_prefix("refs/tags/") {
            GitRef::Tag(t.to_string())
        } else {
            GitRef::Other(full.to_string())
        }
    }

    pub fn branch(&self) -> Option<&str> {
        match self {
            GitRef::Branch(b) => Some(b),
            _ => None,
        }
    }

    pub fn tag(&self) -> Option<&str> {
        match self {
            GitRef::Tag(t) => Some(t),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitInfo {
    pub id: String,
    pub message: String,
    /// Unix nanoseconds; 0 when the payload has no parsable timestamp.
    pub timestamp_ns: i64,
    pub author: Person,
    pub added: Vec<String>,
    pub modified: Vec<String>,
    pub removed: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingEvent {
    pub provider: Provider,
    pub zen: String,
    pub hook_id: Option<u64>,
    pub repository: Option<Repository>,
    pub sender: Person,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushEvent {
    pub provider: Provider,
    pub repository: Repository,
    pub git_ref: GitRef,
    /// The full ref as sent (`refs/heads/main`).
    pub full_ref: String,
    /// Commit before the push; all zeros when the ref was created.
    pub before: String,
    /// Commit after the push; all zeros when the ref was deleted.
    pub after: String,
    pub created: bool,
    pub deleted: bool,
    pub forced: bool,
    /// Commits as listed by the payload (possibly truncated: see [`PushEvent::payload_files`]).
    pub commits: Vec<CommitInfo>,
    /// How many commits the push really has when the provider says (GitLab
    /// `total_commits_count`); None when it does not (GitHub).
    pub total_commits: Option<u64>,
    /// The commit the ref points to after the push, when the payload has it.
    pub head_commit: Option<CommitInfo>,
    pub pusher: Person,
    /// For tag pushes: the branch the tagged commit is on, when GitHub says (`base_ref`).
    pub base_branch: Option<String>,
    /// Annotated tag message (GitLab `message`).
    pub message: Option<String>,
}

/// What happened to a pull request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrAction {
    Opened,
    Reopened,
    /// New commits on the head branch.
    Synchronize,
    Labeled,
    Unlabeled,
    Edited,
    /// Closed; [`PullRequestEvent::merged`] tells whether it was merged.
    Closed,
    /// Any other action, as the provider names it (assigned, approved, ready_for_review, ...).
    Other(String),
}

impl PrAction {
    pub fn as_str(&self) -> &str {
        match self {
            PrAction::Opened => "opened",
            PrAction::Reopened => "reopened",
            PrAction::Synchronize => "synchronize",
            PrAction::Labeled => "labeled",
            PrAction::Unlabeled => "unlabeled",
            PrAction::Edited => "edited",
            PrAction::Closed => "closed",
            PrAction::Other(s) => s,
        }
    }
}

/// One side (head or base) of a pull request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrSide {
    /// Branch name.
    pub branch: String,
    /// Commit SHA; empty when the payload does not give it (GitLab target side).
    pub sha: String,
    /// `owner/name` of the repository this side lives in; empty when the fork was deleted.
    pub repo_full_name: String,
    /// Owner login (GitHub) or group path (GitLab) of that repository.
    pub owner: String,
    pub clone_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequestEvent {
    pub provider: Provider,
    pub action: PrAction,
    /// Number within the repository (GitHub `number`, GitLab `iid`).
    pub number: u64,
    pub title: String,
    /// Author; None when the payload does not name them (GitLab events other than `open`).
    pub author: Option<Person>,
    /// Who caused this event.
    pub sender: Person,
    /// The base repository.
    pub repository: Repository,
    pub head: PrSide,
    pub base: PrSide,
    pub draft: bool,
    pub closed: bool,
    pub merged: bool,
    pub labels: Vec<String>,
    /// The label added or removed by `labeled` / `unlabeled`.
    pub label: Option<String>,
    /// True when the head lives in another repository than the base (or its repository is
    /// gone): runs must not start for it unless a push policy's `allow_fork` says so.
    pub fork: bool,
    /// Provider's mergeability verdict; None while the provider has not computed it.
    pub mergeable: Option<bool>,
    /// Raw provider detail (GitHub `mergeable_state`, GitLab `detailed_merge_status`).
    pub merge_state: Option<String>,
    /// Whether the head is up to date with the base, when the payload tells.
    pub undiverged: Option<bool>,
    /// Approval state, when the payload tells (GitLab approval actions).
    pub approved: Option<bool>,
    /// Head before a `synchronize` (GitHub `before`, GitLab `oldrev`).
    pub before: Option<String>,
    /// Unix nanoseconds; 0 when unknown.
    pub updated_at_ns: i64,
    /// The head commit's metadata, when the payload has it (GitLab `last_commit`).
    pub head_commit: Option<CommitInfo>,
    /// The merge commit on the base branch once merged (GitHub and GitLab `merge_commit_sha`;
    /// GitHub also fills it with a test merge commit while open, so read it only when merged).
    #[serde(default)]
    pub merge_commit: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommentEvent {
    pub provider: Provider,
    pub repository: Repository,
    pub pr_number: u64,
    pub body: String,
    pub comment_id: u64,
    /// Who wrote the comment.
    pub author: Person,
    /// The pull request as the payload shows it. GitLab sends it whole; GitHub sends only the
    /// issue side (title, labels, author, state), so head and base are empty there and the
    /// caller completes them from the last pull-request event it stored.
    pub pull_request: Option<Box<PullRequestEvent>>,
    pub pr_title: String,
    pub pr_labels: Vec<String>,
    pub pr_author: Person,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IgnoredEvent {
    pub provider: Provider,
    pub event: String,
    pub reason: String,
    pub repository: Option<Repository>,
}

/// True for the all-zero object id git uses for "no commit" (SHA-1 or SHA-256 length).
pub fn is_zero_sha(sha: &str) -> bool {
    !sha.is_empty() && sha.bytes().all(|b| b == b'0')
}

/// RFC 3339 (GitHub, GitLab commits) or GitLab's older `2015-05-17 18:21:36 UTC` form, to Unix
/// nanoseconds; 0 when absent or unparsable (a timestamp is informative, never worth
/// rejecting a delivery over).
pub fn timestamp_ns(s: &str) -> i64 {
    let s = s.trim();
    if s.is_empty() {
        return 0;
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return t.timestamp_nanos_opt().unwrap_or(0);
    }
    if let Some(naive) = s.strip_suffix(" UTC") {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(naive, "%Y-%m-%d %H:%M:%S") {
            return t.and_utc().timestamp_nanos_opt().unwrap_or(0);
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_and_shas() {
        assert_eq!(
            GitRef::parse("refs/heads/feat/x"),
            GitRef::Branch("feat/x".into())
        );
        assert_eq!(GitRef::parse("refs/tags/v1"), GitRef::Tag("v1".into()));
        assert_eq!(
            GitRef::parse("refs/pull/1"),
            GitRef::Other("refs/pull/1".into())
        );
        assert!(is_zero_sha("0000000000000000000000000000000000000000"));
        assert!(!is_zero_sha("6113728f27ae82c7b1a177c8d03f9e96e0adf246"));
        assert!(!is_zero_sha(""));
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp_ns("1970-01-01T00:00:01Z"), 1_000_000_000);
        assert_eq!(timestamp_ns("1970-01-01T02:00:01+02:00"), 1_000_000_000);
        assert_eq!(timestamp_ns("1970-01-01 00:00:02 UTC"), 2_000_000_000);
        assert_eq!(timestamp_ns("2015-04-08T21: 00:25-07:00"), 0);
        assert_eq!(timestamp_ns(""), 0);
    }
}
