//! The push-policy input's `push` and `pull_request` documents, built from events with
//! `cairn-policy`'s types.

use cairn_policy::input::{
    InProgressRun, PolicyInput, PullRequest, PushCommit, PushInput, StackInfo, VcsIntegration,
};
use cairn_policy::PolicyError;
use serde_json::Value as Json;

use crate::event::{CommentEvent, CommitInfo, PrAction, PullRequestEvent, PushEvent};
use crate::git::CommitMeta;

/// What a pull-request payload does not say, supplied by the caller (from git, the provider's
/// API or stored state). `None` keeps whatever the payload said, if anything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PrFacts {
    /// Files changed between base and head (see [`crate::git::merge_base_diff`]).
    pub diff: Vec<String>,
    pub approved: Option<bool>,
    pub mergeable: Option<bool>,
    /// See [`crate::git::is_ancestor`] (base tip an ancestor of head).
    pub undiverged: Option<bool>,
    pub head_commit: Option<CommitMeta>,
    pub base_commit: Option<CommitMeta>,
    /// The merge commit of a merged pull request, when git has it.
    pub merge_commit: Option<CommitMeta>,
}

/// The event-dependent part of a push-policy input.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PushPolicyDocs {
    pub push: PushCommit,
    /// None for plain pushes.
    pub pull_request: Option<PullRequest>,
    /// SHA of the pushed (or pull-request head) commit, reported as `input.push.hash`:
    /// `cairn_policy::input::PushCommit` has no field for it, so [`PushPolicyInput`] adds it.
    pub hash: String,
}

fn fill_from_meta(commit: &mut PushCommit, meta: &CommitMeta) {
    if commit.author.is_empty() {
        commit.author = meta.author_name.clone();
    }
    if commit.message.is_empty() {
        commit.message = meta.message.clone();
    }
    if commit.created_at == 0 {
        commit.created_at = meta.authored_at_ns;
    }
}

fn fill_from_info(commit: &mut PushCommit, info: &CommitInfo) {
    if commit.author.is_empty() {
        commit.author = info.author.display().to_string();
    }
    if commit.message.is_empty() {
        commit.message = info.message.clone();
    }
    if commit.created_at == 0 {
        commit.created_at = info.timestamp_ns;
    }
}

/// The `pull_request.action` string: Spacelift reports a merged close as `merged`.
fn policy_action(ev: &PullRequestEvent) -> String {
    match &ev.action {
        PrAction::Closed if ev.merged => "merged".to_string(),
        a => a.as_str().to_string(),
    }
}

impl PushPolicyDocs {
    /// For a branch or tag push; `affected_files` from [`crate::push_affected_files`].
    pub fn for_push(ev: &PushEvent, affected_files: Vec<String>) -> Self {
        let mut push = PushCommit {
            affected_files,
            branch: ev
                .git_ref
                .branch()
                .map(str::to_string)
                .or_else(|| ev.base_branch.clone())
                .unwrap_or_default(),
            tag: ev.git_ref.tag().unwrap_or_default().to_string(),
            ..PushCommit::default()
        };
        if let Some(head) = &ev.head_commit {
            fill_from_info(&mut push, head);
        }
        if push.message.is_empty() {
            push.message = ev.message.clone().unwrap_or_default();
        }
        if push.author.is_empty() {
            push.author = ev.pusher.display().to_string();
        }
        Self {
            push,
            pull_request: None,
            hash: ev.after.clone(),
        }
    }

    /// For a pull-request event. `push` is the head commit, with the diff as affected files.
    pub fn for_pull_request(ev: &PullRequestEvent, facts: &PrFacts) -> Self {
        let mut head = PushCommit {
            affected_files: facts.diff.clone(),
            branch: ev.head.branch.clone(),
            ..PushCommit::default()
        };
        if let Some(meta) = &facts.head_commit {
            fill_from_meta(&mut head, meta);
        }
        if let Some(info) = &ev.head_commit {
            fill_from_info(&mut head, info);
        }
        let mut base = PushCommit {
            branch: ev.base.branch.clone(),
            ..PushCommit::default()
        };
        if let Some(meta) = &facts.base_commit {
            fill_from_meta(&mut base, meta);
        }
        // Spacelift's `push` of a merge event is the merge commit, on the base branch, when the
        // provider names it: the push of the merge to the base branch and this event then
        // resolve to the same commit and deduplicate into one tracked run.
        let merged = ev.merged && matches!(ev.action, PrAction::Closed);
        let merge_commit = ev.merge_commit.clone().filter(|_| merged);
        let mut push = head.clone();
        if merge_commit.is_some() {
            push = PushCommit {
                affected_files: facts.diff.clone(),
                branch: ev.base.branch.clone(),
                ..PushCommit::default()
            };
            if let Some(meta) = &facts.merge_commit {
                fill_from_meta(&mut push, meta);
            }
        }
        let pr = PullRequest {
            action: policy_action(ev),
            action_initiator: ev.sender.display().to_string(),
            approved: facts.approved.or(ev.approved).unwrap_or(false),
            author: ev
                .author
                .as_ref()
                .map(|a| a.display().to_string())
                .unwrap_or_default(),
            base,
            closed: ev.closed,
            comment: None,
            diff: facts.diff.clone(),
            draft: ev.draft,
            head: head.clone(),
            head_owner: ev.head.owner.clone(),
            id: i64::try_from(ev.number).unwrap_or(i64::MAX),
            labels: ev.labels.clone(),
            mergeable: facts.mergeable.or(ev.mergeable).unwrap_or(false),
            title: ev.title.clone(),
            undiverged: facts.undiverged.or(ev.undiverged).unwrap_or(false),
        };
        Self {
            push,
            pull_request: Some(pr),
            hash: merge_commit.unwrap_or_else(|| ev.head.sha.clone()),
        }
    }

    /// For a new comment on a pull request: `pr` is the pull request the comment is on (the
    /// comment's own snapshot for GitLab, the last stored pull-request event for GitHub).
    /// The action is `commented` and `comment` holds the body.
    pub fn for_comment(comment: &CommentEvent, pr: &PullRequestEvent, facts: &PrFacts) -> Self {
        let mut docs = Self::for_pull_request(pr, facts);
        if let Some(p) = docs.pull_request.as_mut() {
            p.action = "commented".to_string();
            p.action_initiator = comment.author.display().to_string();
            p.comment = Some(comment.body.clone());
            if !comment.pr_title.is_empty() {
                p.title = comment.pr_title.clone();
            }
            if !comment.pr_labels.is_empty() {
                p.labels = comment.pr_labels.clone();
            }
            if p.author.is_empty() {
                p.author = comment.pr_author.display().to_string();
            }
        }
        docs
    }

    /// Completes author, message and date from git when the payload lacked them (tag pushes,
    /// GitHub pull requests).
    pub fn with_head_meta(mut self, meta: &CommitMeta) -> Self {
        // A merge event's `push` is the merge commit, not the head.
        if self.hash.is_empty() || self.hash.eq_ignore_ascii_case(&meta.sha) {
            fill_from_meta(&mut self.push, meta);
        }
        if let Some(pr) = self.pull_request.as_mut() {
            fill_from_meta(&mut pr.head, meta);
        }
        self
    }

    /// The whole push-policy input for one stack.
    pub fn into_input(
        self,
        stack: StackInfo,
        in_progress: Vec<InProgressRun>,
        vcs_integration: Option<VcsIntegration>,
    ) -> PushPolicyInput {
        PushPolicyInput {
            input: PushInput {
                push: self.push,
                pull_request: self.pull_request,
                stack,
                in_progress,
                vcs_integration,
            },
            hash: self.hash,
        }
    }
}

/// A [`PushInput`] plus `push.hash`, evaluable as is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PushPolicyInput {
    pub input: PushInput,
    pub hash: String,
}

impl PolicyInput for PushPolicyInput {
    fn to_rego(&self) -> cairn_policy::Result<regorus::Value> {
        Ok(regorus::Value::from(self.to_json()?))
    }

    fn to_json(&self) -> cairn_policy::Result<Json> {
        let mut doc = self.input.to_json()?;
        let push = doc
            .get_mut("push")
            .and_then(Json::as_object_mut)
            .ok_or_else(|| PolicyError::Input("push document is not an object".to_string()))?;
        // Should PushCommit grow a `hash` field, its value wins.
        push.entry("hash")
            .or_insert_with(|| Json::String(self.hash.clone()));
        Ok(doc)
    }
}
