//! Decisions read from the `spacelift` package's rules, how several policies of one kind combine,
//! and how a push decision turns into an action.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::compiled::PolicyKind;
use crate::error::{PolicyError, Result};
use crate::input::{InProgressRun, PushInput};

/// Message used when a feedback rule is written as a boolean (`deny { ... }`): Spacelift then
/// shows no text, but a reason must still exist for the run to fail with.
pub const NO_MESSAGE: &str = "(matched without a message)";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Decision {
    Push(PushDecision),
    Trigger(TriggerDecision),
    Plan(PlanDecision),
    Approval(ApprovalDecision),
}

impl Decision {
    pub fn from_document(kind: PolicyKind, doc: &Json) -> Result<Self> {
        Ok(match kind {
            PolicyKind::Push => Self::Push(PushDecision::from_document(doc)?),
            PolicyKind::Trigger => Self::Trigger(TriggerDecision::from_document(doc)?),
            PolicyKind::Plan => Self::Plan(PlanDecision::from_document(doc)?),
            PolicyKind::Approval => Self::Approval(ApprovalDecision::from_document(doc)?),
        })
    }

    /// Flags any policy kind may set on the run.
    pub fn flags(&self) -> &BTreeSet<String> {
        match self {
            Self::Push(d) => &d.flag,
            Self::Trigger(d) => &d.flag,
            Self::Plan(d) => &d.flag,
            Self::Approval(d) => &d.flag,
        }
    }
}

/// The rules of a push policy, field for field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushDecision {
    pub track: bool,
    pub propose: bool,
    pub ignore: bool,
    pub ignore_track: bool,
    pub notrigger: bool,
    /// Ids of in-progress runs to cancel.
    pub cancel: BTreeSet<String>,
    pub notify: bool,
    pub message: BTreeSet<String>,
    pub fail: bool,
    pub allow_fork: bool,
    pub prioritize: bool,
    /// Lock ids (non-empty strings); `lock := "id"` and `lock["id"]` both count.
    pub lock: BTreeSet<String>,
    pub unlock: BTreeSet<String>,
    pub flag: BTreeSet<String>,
    /// `module_version` (tag-driven module releases), when the policy sets it.
    pub module_version: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerDecision {
    /// Ids of stacks to trigger a tracked run on.
    pub trigger: BTreeSet<String>,
    pub flag: BTreeSet<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanDecision {
    pub deny: BTreeSet<String>,
    pub warn: BTreeSet<String>,
    pub flag: BTreeSet<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalDecision {
    pub approve: bool,
    pub reject: bool,
    pub flag: BTreeSet<String>,
}

fn decision_error(rule: &str, problem: impl Into<String>) -> PolicyError {
    PolicyError::Decision {
        rule: rule.to_string(),
        problem: problem.into(),
    }
}

/// `true` only when the rule is defined and true; undefined and `false` are both "no".
fn bool_rule(doc: &Json, rule: &str) -> Result<bool> {
    match doc.get(rule) {
        None | Some(Json::Null) => Ok(false),
        Some(Json::Bool(b)) => Ok(*b),
        Some(other) => Err(decision_error(
            rule,
            format!("must be a boolean, got {}", short(other)),
        )),
    }
}

/// A set rule (`deny[msg]`), a single-value rule (`lock := id`) or, when `boolean_counts`, a
/// boolean rule (`deny { ... }`). Empty strings are dropped: Spacelift treats an empty lock id as
/// no lock. Non-string members keep their JSON text so nothing a policy says is lost.
fn set_rule(doc: &Json, rule: &str, boolean_counts: bool) -> Result<BTreeSet<String>> {
    let member = |v: &Json| match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = BTreeSet::new();
    match doc.get(rule) {
        None | Some(Json::Null) | Some(Json::Bool(false)) => {}
        Some(Json::Bool(true)) if boolean_counts => {
            out.insert(NO_MESSAGE.to_string());
        }
        Some(Json::Array(items)) => out.extend(items.iter().map(member)),
        Some(Json::String(s)) => {
            out.insert(s.clone());
        }
        Some(other) => {
            return Err(decision_error(
                rule,
                format!("must be a set of strings, got {}", short(other)),
            ))
        }
    }
    out.retain(|s| !s.is_empty());
    Ok(out)
}

fn short(v: &Json) -> String {
    let text = v.to_string();
    if text.chars().count() > 80 {
        format!("{}…", text.chars().take(80).collect::<String>())
    } else {
        text
    }
}

impl PushDecision {
    pub fn from_document(doc: &Json) -> Result<Self> {
        let module_version = match doc.get("module_version") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(decision_error(
                    "module_version",
                    format!("must be a string, got {}", short(other)),
                ))
            }
        };
        Ok(Self {
            track: bool_rule(doc, "track")?,
            propose: bool_rule(doc, "propose")?,
            ignore: bool_rule(doc, "ignore")?,
            ignore_track: bool_rule(doc, "ignore_track")?,
            notrigger: bool_rule(doc, "notrigger")?,
            cancel: set_rule(doc, "cancel", false)?,
            notify: bool_rule(doc, "notify")?,
            message: set_rule(doc, "message", false)?,
            fail: bool_rule(doc, "fail")?,
            allow_fork: bool_rule(doc, "allow_fork")?,
            prioritize: bool_rule(doc, "prioritize")?,
            lock: set_rule(doc, "lock", false)?,
            unlock: set_rule(doc, "unlock", false)?,
            flag: set_rule(doc, "flag", false)?,
            module_version,
        })
    }

    /// Several push policies on one stack are evaluated separately and their results combined:
    /// a boolean rule holds when it holds in any policy (so one `ignore` ignores the push), sets
    /// are unions. `module_version` keeps the first one set.
    pub fn combine(decisions: impl IntoIterator<Item = PushDecision>) -> PushDecision {
        let mut acc = PushDecision::default();
        for d in decisions {
            acc.track |= d.track;
            acc.propose |= d.propose;
            acc.ignore |= d.ignore;
            acc.ignore_track |= d.ignore_track;
            acc.notrigger |= d.notrigger;
            acc.cancel.extend(d.cancel);
            acc.notify |= d.notify;
            acc.message.extend(d.message);
            acc.fail |= d.fail;
            acc.allow_fork |= d.allow_fork;
            acc.prioritize |= d.prioritize;
            acc.lock.extend(d.lock);
            acc.unlock.extend(d.unlock);
            acc.flag.extend(d.flag);
            if acc.module_version.is_none() {
                acc.module_version = d.module_version;
            }
        }
        acc
    }
}

impl TriggerDecision {
    pub fn from_document(doc: &Json) -> Result<Self> {
        Ok(Self {
            trigger: set_rule(doc, "trigger", false)?,
            flag: set_rule(doc, "flag", false)?,
        })
    }

    /// Trigger policies are positive: the stacks to trigger are the union over all policies.
    pub fn combine(decisions: impl IntoIterator<Item = TriggerDecision>) -> TriggerDecision {
        let mut acc = TriggerDecision::default();
        for d in decisions {
            acc.trigger.extend(d.trigger);
            acc.flag.extend(d.flag);
        }
        acc
    }
}

impl PlanDecision {
    pub fn from_document(doc: &Json) -> Result<Self> {
        Ok(Self {
            deny: set_rule(doc, "deny", true)?,
            warn: set_rule(doc, "warn", true)?,
            flag: set_rule(doc, "flag", false)?,
        })
    }

    /// Plan policies are negative: one deny from any policy fails the run; warnings add up.
    pub fn combine(decisions: impl IntoIterator<Item = PlanDecision>) -> PlanDecision {
        let mut acc = PlanDecision::default();
        for d in decisions {
            acc.deny.extend(d.deny);
            acc.warn.extend(d.warn);
            acc.flag.extend(d.flag);
        }
        acc
    }

    pub fn denied(&self) -> bool {
        !self.deny.is_empty()
    }

    pub fn warned(&self) -> bool {
        !self.warn.is_empty()
    }
}

/// What the approval policies attached to a stack conclude together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApprovalOutcome {
    Approved,
    Rejected,
    /// More reviews are needed.
    Undecided,
}

impl ApprovalDecision {
    pub fn from_document(doc: &Json) -> Result<Self> {
        Ok(Self {
            approve: bool_rule(doc, "approve")?,
            reject: bool_rule(doc, "reject")?,
            flag: set_rule(doc, "flag", false)?,
        })
    }

    /// Combines the approval policies of one stack: any rejection rejects the run; the run is
    /// approved once every policy approves; otherwise it waits for more reviews. With no
    /// approval policy at all there is nothing to wait for, so the run is approved.
    pub fn resolve(decisions: &[ApprovalDecision]) -> ApprovalOutcome {
        if decisions.iter().any(|d| d.reject) {
            ApprovalOutcome::Rejected
        } else if decisions.iter().all(|d| d.approve) {
            ApprovalOutcome::Approved
        } else {
            ApprovalOutcome::Undecided
        }
    }

    pub fn flags(decisions: &[ApprovalDecision]) -> BTreeSet<String> {
        decisions
            .iter()
            .flat_map(|d| d.flag.iter().cloned())
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Push resolution
// ---------------------------------------------------------------------------------------------

/// Facts about the stack and the event that a push decision is resolved against.
#[derive(Debug, Clone, Copy, Default)]
pub struct PushContext<'a> {
    /// The pull request comes from a fork of the stack's repository.
    pub from_fork: bool,
    /// Current lock holder (lock id or user) of the stack, if locked.
    pub stack_locked_by: Option<&'a str>,
    /// Runs currently queued or awaiting confirmation on the stack (the input's `in_progress`).
    pub in_progress: &'a [InProgressRun],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IgnoreReason {
    /// An `ignore` rule matched.
    IgnoreRule,
    /// Neither `track` nor `propose` matched.
    NoRuleMatched,
    /// The event comes from a fork and no `allow_fork` rule matched.
    ForkNotAllowed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PushAction {
    /// Set the stack's head commit; create a tracked run unless `notrigger` matched.
    Track { create_run: bool },
    /// Create a proposed run.
    Propose,
    /// Schedule nothing.
    Ignore { reason: IgnoreReason },
    /// The policy tried to lock a stack locked by someone else: runs are rejected.
    Reject { locked_by: String },
}

/// Everything the control plane must do for one stack in response to one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushOutcome {
    pub action: PushAction,
    /// In-progress runs of the same type as the new run, to cancel (only when a run is created).
    pub cancel: BTreeSet<String>,
    /// Mark the new run as prioritized (only when a run is created).
    pub prioritize: bool,
    /// Lock the stack with this id before creating the run.
    pub acquire_lock: Option<String>,
    /// Release the stack's lock held under this id.
    pub release_lock: Option<String>,
    /// Send a commit status for an ignored event (`notify`).
    pub notify: bool,
    /// Report the ignored event as a failed check instead of skipped (`fail`).
    pub fail_check: bool,
    /// Custom check messages for an ignored event (`message`).
    pub messages: Vec<String>,
    pub flags: BTreeSet<String>,
    pub module_version: Option<String>,
}

impl PushOutcome {
    /// Whether a run is created (tracked with trigger, or proposed).
    pub fn creates_run(&self) -> bool {
        matches!(
            self.action,
            PushAction::Track { create_run: true } | PushAction::Propose
        )
    }

    /// Whether the stack's head commit moves to the pushed commit.
    pub fn sets_head_commit(&self) -> bool {
        matches!(self.action, PushAction::Track { .. })
    }
}

/// Turns a (combined) push decision into an action, following Spacelift's documented rules:
/// `ignore` beats everything; no matching rule ignores; `ignore_track` turns `track` into
/// `propose`; `notrigger` only counts with `track`; forks need `allow_fork`; cancelation only
/// happens when a new run is created and only targets runs of the same type; locking a stack held
/// by someone else rejects the run; `notify`, `fail` and `message` only concern ignored events.
pub fn resolve_push(decision: &PushDecision, ctx: &PushContext<'_>) -> PushOutcome {
    let mut action = if decision.ignore {
        PushAction::Ignore {
            reason: IgnoreReason::IgnoreRule,
        }
    } else if decision.track && !decision.ignore_track {
        PushAction::Track {
            create_run: !decision.notrigger,
        }
    } else if decision.track || decision.propose {
        PushAction::Propose
    } else {
        PushAction::Ignore {
            reason: IgnoreReason::NoRuleMatched,
        }
    };
    if ctx.from_fork && !decision.allow_fork && !matches!(action, PushAction::Ignore { .. }) {
        action = PushAction::Ignore {
            reason: IgnoreReason::ForkNotAllowed,
        };
    }

    let mut locked_by = ctx.stack_locked_by.filter(|s| !s.is_empty());
    let mut release_lock = None;
    if let Some(holder) = locked_by {
        if decision.unlock.contains(holder) {
            release_lock = Some(holder.to_string());
            locked_by = None;
        }
    }
    let mut acquire_lock = None;
    if let Some(wanted) = decision.lock.iter().next() {
        match locked_by {
            None => acquire_lock = Some(wanted.clone()),
            Some(holder) if decision.lock.contains(holder) => {}
            Some(holder) => {
                if !matches!(action, PushAction::Ignore { .. }) {
                    action = PushAction::Reject {
                        locked_by: holder.to_string(),
                    };
                }
            }
        }
    }

    let run_type = match action {
        PushAction::Track { create_run: true } => Some("TRACKED"),
        PushAction::Propose => Some("PROPOSED"),
        _ => None,
    };
    let cancel = match run_type {
        Some(ty) => ctx
            .in_progress
            .iter()
            .filter(|r| r.r#type.eq_ignore_ascii_case(ty) && decision.cancel.contains(&r.id))
            .map(|r| r.id.clone())
            .collect(),
        None => BTreeSet::new(),
    };
    let ignored = matches!(action, PushAction::Ignore { .. });
    PushOutcome {
        prioritize: run_type.is_some() && decision.prioritize,
        cancel,
        acquire_lock,
        release_lock,
        notify: ignored && decision.notify,
        fail_check: ignored && decision.fail,
        messages: if ignored {
            decision.message.iter().cloned().collect()
        } else {
            Vec::new()
        },
        flags: decision.flag.clone(),
        module_version: decision.module_version.clone(),
        action,
    }
}

// ---------------------------------------------------------------------------------------------
// Default push behaviour (no push policy attached)
// ---------------------------------------------------------------------------------------------

fn normalize_path(path: &str) -> &str {
    path.trim_matches('/')
}

/// Whether any of `files` lies under `project_root` (a plain prefix test on slash-trimmed
/// paths, as Spacelift's default policy does) or matches one of `globs` (`*` stays within one
/// path segment, `**` crosses segments, like Rego's `glob.match(pattern, ["/"], path)`).
pub fn is_affected(project_root: &str, globs: &[String], files: &[String]) -> bool {
    let root = normalize_path(project_root);
    let files: Vec<&str> = files.iter().map(|f| normalize_path(f)).collect();
    if files.iter().any(|f| f.starts_with(root)) {
        return true;
    }
    if globs.is_empty() {
        return false;
    }
    GLOB_MATCHERS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.len() > GLOB_CACHE_MAX {
            cache.clear();
        }
        globs.iter().any(|g| {
            let matcher = cache.entry(g.clone()).or_insert_with(|| {
                globset::GlobBuilder::new(g)
                    .literal_separator(true)
                    .build()
                    .ok()
                    .map(|g| g.compile_matcher())
            });
            matcher
                .as_ref()
                .is_some_and(|m| files.iter().any(|f| m.is_match(f)))
        })
    })
}

/// Compiled project globs, per thread. A push into a monorepo decides thousands of stacks that
/// share the same few globs, and compiling one (a regex automaton) costs far more than
/// matching it. Invalid globs are remembered as `None` (they match nothing).
const GLOB_CACHE_MAX: usize = 1_024;
thread_local! {
    static GLOB_MATCHERS: std::cell::RefCell<std::collections::HashMap<String, Option<globset::GlobMatcher>>> =
        std::cell::RefCell::default();
}

/// The decision Spacelift takes when no push policy is attached: a push to the tracked branch
/// touching the project root (or an additional project glob) is tracked; a push or pull request
/// elsewhere touching it is proposed; anything else, and any tag push, is ignored.
pub fn default_push_decision(input: &PushInput) -> PushDecision {
    let root = input.stack.project_root.as_deref().unwrap_or("");
    let globs = &input.stack.additional_project_globs;
    let affected = is_affected(root, globs, &input.push.affected_files);
    let affected_pr = input
        .pull_request
        .as_ref()
        .is_some_and(|pr| is_affected(root, globs, &pr.diff));
    PushDecision {
        track: affected && input.push.branch == input.stack.branch,
        propose: affected || affected_pr,
        ignore: (!affected && !affected_pr) || !input.push.tag.is_empty(),
        ..PushDecision::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_push_rules_of_every_shape() {
        let doc = json!({
            "track": true, "propose": false, "cancel": ["r1", "r2"], "message": ["I love bacon"],
            "lock": "PR_ID_7", "unlock": ["", "x"], "flag": ["review:network"], "module_version": "1.2.3",
            "helper": {"anything": 1}
        });
        let d = PushDecision::from_document(&doc).expect("decision");
        assert!(d.track && !d.propose && !d.ignore);
        assert_eq!(d.cancel, ["r1".to_string(), "r2".to_string()].into());
        assert_eq!(d.lock, ["PR_ID_7".to_string()].into());
        assert_eq!(d.unlock, ["x".to_string()].into());
        assert_eq!(d.module_version.as_deref(), Some("1.2.3"));
    }

    #[test]
    fn wrong_rule_type_is_an_error() {
        let err = PushDecision::from_document(&json!({"track": "yes"})).expect_err("must fail");
        assert!(matches!(err, PolicyError::Decision { ref rule, .. } if rule == "track"));
    }

    #[test]
    fn boolean_deny_still_denies() {
        let d = PlanDecision::from_document(&json!({"deny": true, "warn": ["w"]})).expect("plan");
        assert!(d.denied() && d.warned());
        assert!(d.deny.contains(NO_MESSAGE));
    }

    fn push(d: PushDecision) -> PushAction {
        resolve_push(&d, &PushContext::default()).action
    }

    #[test]
    fn push_resolution_rules() {
        let t = PushDecision {
            track: true,
            ..Default::default()
        };
        assert_eq!(push(t.clone()), PushAction::Track { create_run: true });
        assert_eq!(
            push(PushDecision {
                ignore: true,
                propose: true,
                ..t.clone()
            }),
            PushAction::Ignore {
                reason: IgnoreReason::IgnoreRule
            }
        );
        assert_eq!(
            push(PushDecision::default()),
            PushAction::Ignore {
                reason: IgnoreReason::NoRuleMatched
            }
        );
        assert_eq!(
            push(PushDecision {
                ignore_track: true,
                ..t.clone()
            }),
            PushAction::Propose
        );
        assert_eq!(
            push(PushDecision {
                notrigger: true,
                ..t.clone()
            }),
            PushAction::Track { create_run: false }
        );
        assert_eq!(
            push(PushDecision {
                notrigger: true,
                propose: true,
                ..Default::default()
            }),
            PushAction::Propose
        );
    }

    #[test]
    fn forks_need_allow_fork() {
        let d = PushDecision {
            propose: true,
            ..Default::default()
        };
        let ctx = PushContext {
            from_fork: true,
            ..Default::default()
        };
        assert_eq!(
            resolve_push(&d, &ctx).action,
            PushAction::Ignore {
                reason: IgnoreReason::ForkNotAllowed
            }
        );
        let allowed = PushDecision {
            allow_fork: true,
            ..d
        };
        assert_eq!(resolve_push(&allowed, &ctx).action, PushAction::Propose);
    }

    #[test]
    fn cancel_only_same_type_and_only_with_a_new_run() {
        let runs = vec![
            InProgressRun {
                id: "p1".into(),
                r#type: "PROPOSED".into(),
                state: "QUEUED".into(),
                ..Default::default()
            },
            InProgressRun {
                id: "t1".into(),
                r#type: "TRACKED".into(),
                state: "UNCONFIRMED".into(),
                ..Default::default()
            },
        ];
        let ctx = PushContext {
            in_progress: &runs,
            ..Default::default()
        };
        let d = PushDecision {
            propose: true,
            cancel: ["p1".to_string(), "t1".to_string()].into(),
            ..Default::default()
        };
        assert_eq!(resolve_push(&d, &ctx).cancel, ["p1".to_string()].into());
        let ignored = PushDecision { ignore: true, ..d };
        assert!(resolve_push(&ignored, &ctx).cancel.is_empty());
    }

    #[test]
    fn lock_rules() {
        let d = PushDecision {
            propose: true,
            lock: ["PR_1".to_string()].into(),
            ..Default::default()
        };
        let free = resolve_push(&d, &PushContext::default());
        assert_eq!(free.acquire_lock.as_deref(), Some("PR_1"));
        let same = resolve_push(
            &d,
            &PushContext {
                stack_locked_by: Some("PR_1"),
                ..Default::default()
            },
        );
        assert_eq!(
            (same.action, same.acquire_lock),
            (PushAction::Propose, None)
        );
        let other = resolve_push(
            &d,
            &PushContext {
                stack_locked_by: Some("alice"),
                ..Default::default()
            },
        );
        assert_eq!(
            other.action,
            PushAction::Reject {
                locked_by: "alice".into()
            }
        );
        let unlock = PushDecision {
            unlock: ["PR_1".to_string()].into(),
            ..Default::default()
        };
        let released = resolve_push(
            &unlock,
            &PushContext {
                stack_locked_by: Some("PR_1"),
                ..Default::default()
            },
        );
        assert_eq!(released.release_lock.as_deref(), Some("PR_1"));
        let not_ours = resolve_push(
            &unlock,
            &PushContext {
                stack_locked_by: Some("alice"),
                ..Default::default()
            },
        );
        assert_eq!(not_ours.release_lock, None);
    }

    #[test]
    fn notify_fail_message_only_when_ignored() {
        let d = PushDecision {
            fail: true,
            notify: true,
            message: ["I love bacon".to_string()].into(),
            ..Default::default()
        };
        let o = resolve_push(&d, &PushContext::default());
        assert!(o.fail_check && o.notify);
        assert_eq!(o.messages, vec!["I love bacon".to_string()]);
        let proposed = resolve_push(
            &PushDecision { propose: true, ..d },
            &PushContext::default(),
        );
        assert!(!proposed.fail_check && !proposed.notify && proposed.messages.is_empty());
    }

    #[test]
    fn combination_rules() {
        let a = PushDecision {
            track: true,
            ..Default::default()
        };
        let b = PushDecision {
            ignore: true,
            ..Default::default()
        };
        let both = PushDecision::combine([a, b]);
        assert!(matches!(
            resolve_push(&both, &PushContext::default()).action,
            PushAction::Ignore { .. }
        ));
        let approve = ApprovalDecision {
            approve: true,
            ..Default::default()
        };
        let undecided = ApprovalDecision::default();
        let reject = ApprovalDecision {
            reject: true,
            approve: true,
            ..Default::default()
        };
        assert_eq!(
            ApprovalDecision::resolve(&[approve.clone(), approve.clone()]),
            ApprovalOutcome::Approved
        );
        assert_eq!(
            ApprovalDecision::resolve(&[approve.clone(), undecided]),
            ApprovalOutcome::Undecided
        );
        assert_eq!(
            ApprovalDecision::resolve(&[approve, reject]),
            ApprovalOutcome::Rejected
        );
        assert_eq!(ApprovalDecision::resolve(&[]), ApprovalOutcome::Approved);
        let plan = PlanDecision::combine([
            PlanDecision {
                warn: ["w".into()].into(),
                ..Default::default()
            },
            PlanDecision {
                deny: ["d".into()].into(),
                ..Default::default()
            },
        ]);
        assert!(plan.denied() && plan.warned());
    }

    #[test]
    fn affected_files_and_globs() {
        let files = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(is_affected("infra", &[], &files(&["infra/main.tf"])));
        assert!(is_affected("/infra/", &[], &files(&["/infra/main.tf"])));
        assert!(!is_affected("infra", &[], &files(&["app/main.go"])));
        assert!(is_affected("", &[], &files(&["anything"])));
        let globs = vec!["modules/*.tf".to_string(), "shared/**".to_string()];
        assert!(is_affected("infra", &globs, &files(&["modules/a.tf"])));
        assert!(!is_affected("infra", &globs, &files(&["modules/x/a.tf"])));
        assert!(is_affected("infra", &globs, &files(&["shared/x/y/z.json"])));
        // Matchers are cached per glob: the same glob answers the same on later calls, an
        // invalid one never matches (and is not retried into an error), and overflowing the
        // cache changes no answer.
        let bad = vec!["modules/[".to_string(), "shared/**".to_string()];
        for round in 0..3 {
            assert!(
                !is_affected("infra", &bad, &files(&["modules/["])),
                "{round}"
            );
            assert!(is_affected("infra", &bad, &files(&["shared/a"])), "{round}");
            assert!(!is_affected("infra", &globs, &files(&["modules/x/a.tf"])));
        }
        for i in 0..GLOB_CACHE_MAX + 2 {
            let g = vec![format!("m{i}/*.tf")];
            assert!(is_affected("infra", &g, &files(&[&format!("m{i}/a.tf")])));
            assert!(!is_affected("infra", &g, &files(&["m/a.tf"])));
        }
        assert!(is_affected("infra", &globs, &files(&["modules/a.tf"])));
    }
}
