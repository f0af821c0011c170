//! The push-policy examples of Spacelift's push-policy page, on hand-built inputs, resolved with
//! `resolve_push`; and the default behaviour checked against its Rego formulation.

use cairn_policy::input::{InProgressRun, PullRequest, PushCommit, PushInput, StackInfo};
use cairn_policy::{
    default_push_decision, resolve_push, CompiledPolicy, Decision, IgnoreReason, PolicyKind,
    PolicyOptions, PushAction, PushContext, PushDecision,
};

fn compile(body: &str) -> CompiledPolicy {
    CompiledPolicy::compile("p", 1, PolicyKind::Push, body, PolicyOptions::default())
        .unwrap_or_else(|e| panic!("compile: {e}"))
}

fn decide(p: &CompiledPolicy, input: &PushInput) -> PushDecision {
    match p.decide(input).expect("evaluate") {
        Decision::Push(d) => d,
        other => panic!("unexpected {other:?}"),
    }
}

fn action(p: &CompiledPolicy, input: &PushInput) -> PushAction {
    resolve_push(&decide(p, input), &PushContext::default()).action
}

fn stack() -> StackInfo {
    StackInfo {
        id: "infra".to_string(),
        name: "infra".to_string(),
        branch: "main".to_string(),
        project_root: Some("infra".to_string()),
        labels: vec![],
        ..StackInfo::default()
    }
}

fn files(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn push_to(branch: &str, affected: &[&str]) -> PushInput {
    PushInput {
        push: PushCommit {
            branch: branch.to_string(),
            affected_files: files(affected),
            author: "alice".to_string(),
            message: "change".to_string(),
            ..PushCommit::default()
        },
        pull_request: None,
        stack: stack(),
        ..PushInput::default()
    }
}

fn pr_from(branch: &str, diff: &[&str], labels: &[&str]) -> PushInput {
    let mut input = push_to(branch, diff);
    input.pull_request = Some(PullRequest {
        action: "opened".to_string(),
        id: 42,
        diff: files(diff),
        labels: labels.iter().map(|s| s.to_string()).collect(),
        head: PushCommit {
            branch: branch.to_string(),
            affected_files: files(diff),
            ..PushCommit::default()
        },
        base: PushCommit {
            branch: "main".to_string(),
            ..PushCommit::default()
        },
        head_owner: "acme".to_string(),
        ..PullRequest::default()
    });
    input
}

const TRACK: PushAction = PushAction::Track { create_run: true };
const NO_RULE: PushAction = PushAction::Ignore {
    reason: IgnoreReason::NoRuleMatched,
};
const IGNORED: PushAction = PushAction::Ignore {
    reason: IgnoreReason::IgnoreRule,
};

#[test]
fn proposed_runs_only_for_pull_requests() {
    let p = compile(
        r#"package spacelift

track   { input.push.branch == input.stack.branch }
propose { not is_null(input.pull_request) }
ignore  { not track; not propose }
"#,
    );
    assert_eq!(action(&p, &push_to("main", &["infra/a.tf"])), TRACK);
    assert_eq!(
        action(&p, &pr_from("feature", &["infra/a.tf"], &[])),
        PushAction::Propose
    );
    assert_eq!(action(&p, &push_to("feature", &["infra/a.tf"])), IGNORED);
}

#[test]
fn tracked_runs_only_from_pull_requests() {
    let p = compile(
        r#"package spacelift

track   { is_pr; input.push.branch == input.stack.branch }
propose { is_pr }
ignore  { not is_pr }
is_pr   { not is_null(input.pull_request) }
"#,
    );
    assert_eq!(action(&p, &push_to("main", &["infra/a.tf"])), IGNORED);
    assert_eq!(action(&p, &pr_from("main", &["infra/a.tf"], &[])), TRACK);
    assert_eq!(
        action(&p, &pr_from("feature", &["infra/a.tf"], &[])),
        PushAction::Propose
    );
}

#[test]
fn deploy_label() {
    let p = compile(
        r#"package spacelift

track   { is_pr; labeled }
propose { true }
is_pr   { not is_null(input.pull_request) }
labeled { input.pull_request.labels[_] == "deploy" }
"#,
    );
    assert_eq!(action(&p, &pr_from("feature", &[], &["deploy"])), TRACK);
    assert_eq!(
        action(&p, &pr_from("feature", &[], &["wip"])),
        PushAction::Propose
    );
    assert_eq!(action(&p, &push_to("main", &[])), PushAction::Propose);
}

fn in_progress() -> Vec<InProgressRun> {
    let run = |id: &str, ty: &str, state: &str, branch: &str| InProgressRun {
        id: id.to_string(),
        r#type: ty.to_string(),
        state: state.to_string(),
        branch: branch.to_string(),
        ..InProgressRun::default()
    };
    vec![
        run("p-queued-feature", "PROPOSED", "QUEUED", "feature"),
        run("p-queued-other", "PROPOSED", "QUEUED", "other"),
        run("p-ready", "PROPOSED", "READY", "feature"),
        run("t-unconfirmed", "TRACKED", "UNCONFIRMED", "main"),
    ]
}

#[test]
fn cancel_in_progress_runs() {
    let mut input = pr_from("feature", &["infra/a.tf"], &[]);
    input.in_progress = in_progress();
    let ctx = PushContext {
        in_progress: &input.in_progress,
        ..PushContext::default()
    };

    let all = compile(
        "package spacelift\n\npropose { true }\ncancel[run.id] { run := input.in_progress[_] }\n",
    );
    let d = decide(&all, &input);
    assert_eq!(d.cancel.len(), 4);
    let outcome = resolve_push(&d, &ctx);
    assert_eq!(outcome.action, PushAction::Propose);
    // Only runs of the new run's type are cancelled.
    assert_eq!(outcome.cancel.len(), 3);
    assert!(!outcome.cancel.contains("t-unconfirmed"));

    let queued = compile(
        r#"package spacelift

propose { true }
cancel[run.id] {
  run := input.in_progress[_]
  run.type == "PROPOSED"
  run.state == "QUEUED"
}
"#,
    );
    let d = decide(&queued, &input);
    assert_eq!(
        d.cancel,
        ["p-queued-feature".to_string(), "p-queued-other".to_string()].into()
    );

    let same_branch = compile(
        r#"package spacelift

propose { true }
cancel[run.id] {
  run := input.in_progress[_]
  run.type == "PROPOSED"
  run.state == "QUEUED"
  run.branch == input.pull_request.head.branch
}
"#,
    );
    let d = decide(&same_branch, &input);
    assert_eq!(d.cancel, ["p-queued-feature".to_string()].into());

    // Without a new run, cancelation has no effect.
    let ignore = compile("package spacelift\n\ncancel[run.id] { run := input.in_progress[_] }\n");
    assert!(resolve_push(&decide(&ignore, &input), &ctx)
        .cancel
        .is_empty());
}

#[test]
fn failed_check_with_custom_message() {
    let p = compile("package spacelift\n\nfail { true }\nmessage[\"I love bacon\"] { true }\n");
    let outcome = resolve_push(&decide(&p, &push_to("main", &[])), &PushContext::default());
    assert_eq!(outcome.action, NO_RULE);
    assert!(outcome.fail_check);
    assert_eq!(outcome.messages, vec!["I love bacon".to_string()]);
}

#[test]
fn tag_driven_module_version() {
    let p = compile(
        r#"package spacelift

module_version := version {
    version := trim_prefix(input.push.tag, "v")
    not propose
}

module_version := "<X.X.X>" {
    propose
}

propose {
  not is_null(input.pull_request)
}

track {
  module_version != ""
  input.push.branch == input.stack.branch
}
"#,
    );
    let mut tag = push_to("main", &[]);
    tag.push.tag = "v1.2.3".to_string();
    let d = decide(&p, &tag);
    assert_eq!(d.module_version.as_deref(), Some("1.2.3"));
    assert!(d.track);
    let pr = decide(&p, &pr_from("feature", &[], &[]));
    assert_eq!(pr.module_version.as_deref(), Some("<X.X.X>"));
    assert!(pr.propose && !pr.track);
}

#[test]
fn allow_fork_for_trusted_owners() {
    let p = compile(
        r#"package spacelift

propose { true }
allow_fork {
  validOwners := {"johnwayne", "microsoft"}
  validOwners[input.pull_request.head_owner]
}
"#,
    );
    let fork = PushContext {
        from_fork: true,
        ..PushContext::default()
    };
    let mut trusted = pr_from("feature", &[], &[]);
    if let Some(pr) = trusted.pull_request.as_mut() {
        pr.head_owner = "microsoft".to_string();
    }
    assert_eq!(
        resolve_push(&decide(&p, &trusted), &fork).action,
        PushAction::Propose
    );
    let stranger = pr_from("feature", &[], &[]);
    assert_eq!(
        resolve_push(&decide(&p, &stranger), &fork).action,
        PushAction::Ignore {
            reason: IgnoreReason::ForkNotAllowed
        }
    );
}

const APPROVED_PR: &str = r#"package spacelift

# Trigger a tracked run if a change is pushed to the stack branch
track {
  affected
  input.push.branch == input.stack.branch
}

# Trigger a tracked run if a PR is approved, mergeable, undiverged and has a deploy label
track {
  is_pr
  is_clean
  is_approved
  is_marked_for_deploy
}

# Trigger a proposed run if a PR is opened
propose {
  is_pr
}

is_pr {
  not is_null(input.pull_request)
}

is_clean {
  input.pull_request.mergeable
  input.pull_request.undiverged
}

is_approved {
  input.pull_request.approved
}

is_marked_for_deploy {
  input.pull_request.labels[_] == "deploy"
}

affected {
  startswith(input.push.affected_files[_], input.stack.project_root)
}
"#;

#[test]
fn approved_mergeable_pull_requests_deploy() {
    let p = compile(APPROVED_PR);
    let mut pr = pr_from("feature", &["infra/a.tf"], &["deploy"]);
    assert_eq!(action(&p, &pr), PushAction::Propose);
    if let Some(r) = pr.pull_request.as_mut() {
        r.approved = true;
        r.mergeable = true;
        r.undiverged = true;
    }
    assert_eq!(action(&p, &pr), TRACK);
    assert_eq!(action(&p, &push_to("main", &["infra/a.tf"])), TRACK);
    assert_eq!(action(&p, &push_to("main", &["docs/readme.md"])), NO_RULE);
}

const IGNORE_PATHS: &str = r#"package spacelift

track   { input.push.branch == input.stack.branch }
propose { input.push.branch != "" }
ignore  { not affected }

affected {
  some i, j, k

  tracked_directories := {"modules/", "production/"}
  tracked_extensions := {".tf", ".tf.json"}

  path := input.push.affected_files[i]

  startswith(path, tracked_directories[j])
  endswith(path, tracked_extensions[k])
}
"#;

#[test]
fn ignoring_certain_paths() {
    let p = compile(IGNORE_PATHS);
    assert_eq!(action(&p, &push_to("main", &["production/db.tf"])), TRACK);
    assert_eq!(
        action(&p, &push_to("main", &["modules/x/main.tf.json"])),
        TRACK
    );
    assert_eq!(
        action(&p, &push_to("feature", &["modules/vpc.tf"])),
        PushAction::Propose
    );
    assert_eq!(
        action(&p, &push_to("main", &["production/README.md"])),
        IGNORED
    );
    assert_eq!(action(&p, &push_to("main", &["app/main.go"])), IGNORED);
}

#[test]
fn notify_on_ignored_pushes() {
    let body = format!("{IGNORE_PATHS}\nnotify {{ ignore }}\n");
    let p = compile(&body);
    let ignored = resolve_push(
        &decide(&p, &push_to("main", &["app/main.go"])),
        &PushContext::default(),
    );
    assert!(ignored.notify);
    let tracked = resolve_push(
        &decide(&p, &push_to("main", &["modules/a.tf"])),
        &PushContext::default(),
    );
    assert!(!tracked.notify);
}

#[test]
fn apply_from_semver_tags() {
    let p = compile(
        r#"package spacelift

track   { re_match(`^\d+\.\d+\.\d+$`, input.push.tag) }
propose { input.push.branch != input.stack.branch }
"#,
    );
    let mut tag = push_to("main", &[]);
    tag.push.tag = "1.4.0".to_string();
    assert_eq!(action(&p, &tag), TRACK);
    let mut bad = push_to("main", &[]);
    bad.push.tag = "release-1".to_string();
    assert_eq!(action(&p, &bad), NO_RULE);
    assert_eq!(action(&p, &push_to("feature", &[])), PushAction::Propose);
}

#[test]
fn set_head_commit_without_triggering() {
    let p = compile(
        r#"package spacelift

track     { input.push.branch == input.stack.branch }
propose   { not track }
notrigger { true }
"#,
    );
    let outcome = resolve_push(&decide(&p, &push_to("main", &[])), &PushContext::default());
    assert_eq!(outcome.action, PushAction::Track { create_run: false });
    assert!(outcome.sets_head_commit() && !outcome.creates_run());
    // notrigger only counts together with track.
    assert_eq!(action(&p, &push_to("feature", &[])), PushAction::Propose);
}

#[test]
fn ignore_track_turns_track_into_propose() {
    let p = compile(
        "package spacelift\n\ntrack { true }\nignore_track { input.push.author == \"bot\" }\n",
    );
    let mut bot = push_to("main", &[]);
    bot.push.author = "bot".to_string();
    assert_eq!(action(&p, &bot), PushAction::Propose);
    assert_eq!(action(&p, &push_to("main", &[])), TRACK);
}

#[test]
fn prioritize_by_label() {
    let p = compile(
        "package spacelift\n\ntrack { true }\nprioritize { input.stack.labels[_] == \"prioritize\" }\n",
    );
    let mut input = push_to("main", &[]);
    input.stack.labels = vec!["prioritize".to_string()];
    assert!(resolve_push(&decide(&p, &input), &PushContext::default()).prioritize);
    assert!(!resolve_push(&decide(&p, &push_to("main", &[])), &PushContext::default()).prioritize);
}

#[test]
fn lock_and_unlock_from_pull_requests() {
    let p = compile(
        r#"package spacelift

import future.keywords

propose { true }

lock_id := sprintf("PR_ID_%d", [input.pull_request.id])

lock := lock_id {
    input.pull_request.action in ["opened", "synchronize"]
}

unlock := lock_id {
    input.pull_request.action in ["closed", "merged"]
}

unlock := lock_id {
    input.pull_request.action == "commented"
    input.pull_request.comment == concat(" ", ["/spacelift", "unlock", input.stack.id])
}
"#,
    );
    let opened = pr_from("feature", &[], &[]);
    let d = decide(&p, &opened);
    assert_eq!(d.lock, ["PR_ID_42".to_string()].into());
    let o = resolve_push(&d, &PushContext::default());
    assert_eq!(o.acquire_lock.as_deref(), Some("PR_ID_42"));

    let other_holder = PushContext {
        stack_locked_by: Some("PR_ID_7"),
        ..PushContext::default()
    };
    assert_eq!(
        resolve_push(&d, &other_holder).action,
        PushAction::Reject {
            locked_by: "PR_ID_7".to_string()
        }
    );

    let mut closed = pr_from("feature", &[], &[]);
    if let Some(pr) = closed.pull_request.as_mut() {
        pr.action = "closed".to_string();
    }
    let held = PushContext {
        stack_locked_by: Some("PR_ID_42"),
        ..PushContext::default()
    };
    let o = resolve_push(&decide(&p, &closed), &held);
    assert_eq!(o.release_lock.as_deref(), Some("PR_ID_42"));

    let mut comment = pr_from("feature", &[], &[]);
    if let Some(pr) = comment.pull_request.as_mut() {
        pr.action = "commented".to_string();
        pr.comment = Some("/spacelift unlock infra".to_string());
    }
    assert_eq!(decide(&p, &comment).unlock, ["PR_ID_42".to_string()].into());
}

#[test]
fn lock_only_affected_stacks_in_rego_v1() {
    let p = compile(
        r#"package spacelift

lock_id := sprintf("PR_ID_%d", [input.pull_request.id])

lock := lock_id if {
    input.pull_request.action in ["opened", "synchronize"]
    affected_pr
}

unlock := lock_id if {
    input.pull_request.action in ["closed", "merged"]
    affected_pr
}

affected_pr if {
    some filepath in input.pull_request.diff
    startswith(filepath, input.stack.project_root)
}

affected_pr if {
    some filepath in input.pull_request.diff
    some glob_pattern in input.stack.additional_project_globs
    glob.match(glob_pattern, ["/"], filepath)
}
"#,
    );
    assert_eq!(
        decide(&p, &pr_from("feature", &["infra/main.tf"], &[])).lock,
        ["PR_ID_42".to_string()].into()
    );
    assert!(decide(&p, &pr_from("feature", &["app/x.go"], &[]))
        .lock
        .is_empty());
    let mut glob = pr_from("feature", &["shared/vars.tf"], &[]);
    glob.stack.additional_project_globs = vec!["shared/*.tf".to_string()];
    assert_eq!(decide(&p, &glob).lock, ["PR_ID_42".to_string()].into());
}

#[test]
fn flags_for_review() {
    let p = compile(
        r#"package spacelift

network_review_flag = "review:network"

flag[network_review_flag] {
  startswith(input.push.affected_files[_], "network/")
}

track { true }
"#,
    );
    assert_eq!(
        decide(&p, &push_to("main", &["network/vpc.tf"])).flag,
        ["review:network".to_string()].into()
    );
    assert!(decide(&p, &push_to("main", &["db/x.tf"])).flag.is_empty());
}

/// Spacelift's default behaviour, written as a policy, evaluated by the engine.
const DEFAULT_AS_REGO: &str = r#"package spacelift

track {
  affected
  input.push.branch == input.stack.branch
}

propose { affected }
propose { affected_pr }

ignore {
  not affected
  not affected_pr
}
ignore { input.push.tag != "" }

affected {
  f := input.push.affected_files[_]
  startswith(clean(f), clean(input.stack.project_root))
}

affected {
  f := input.push.affected_files[_]
  g := input.stack.additional_project_globs[_]
  glob.match(g, ["/"], clean(f))
}

affected_pr {
  f := input.pull_request.diff[_]
  startswith(clean(f), clean(input.stack.project_root))
}

affected_pr {
  f := input.pull_request.diff[_]
  g := input.stack.additional_project_globs[_]
  glob.match(g, ["/"], clean(f))
}

clean(path) = trim(path, "/")
"#;

#[test]
fn default_behaviour_matches_its_rego_formulation() {
    let rego = compile(DEFAULT_AS_REGO);
    let mut cases = vec![
        push_to("main", &["infra/main.tf"]),
        push_to("main", &["/infra/main.tf"]),
        push_to("feature", &["infra/main.tf"]),
        push_to("main", &["app/main.go"]),
        push_to("feature", &["app/main.go"]),
        pr_from("feature", &["infra/x.tf"], &[]),
        pr_from("feature", &["app/x.go"], &[]),
    ];
    let mut tag = push_to("main", &["infra/main.tf"]);
    tag.push.tag = "v1".to_string();
    cases.push(tag);
    for globbed in [["shared/a.tf"], ["shared/x/a.tf"]] {
        let mut c = push_to("main", &globbed);
        c.stack.additional_project_globs = vec!["shared/*.tf".to_string()];
        cases.push(c);
        let mut c = push_to("main", &globbed);
        c.stack.additional_project_globs = vec!["shared/**".to_string()];
        cases.push(c);
    }
    for case in &cases {
        assert_eq!(
            default_push_decision(case),
            decide(&rego, case),
            "case {:?}",
            (&case.push, &case.stack.additional_project_globs)
        );
    }
    let ctx = PushContext::default();
    assert_eq!(
        resolve_push(&default_push_decision(&cases[0]), &ctx).action,
        TRACK
    );
    assert_eq!(
        resolve_push(&default_push_decision(&cases[2]), &ctx).action,
        PushAction::Propose
    );
    assert_eq!(
        resolve_push(&default_push_decision(&cases[3]), &ctx).action,
        IGNORED
    );
}

#[test]
fn several_push_policies_combine() {
    let tracker = compile("package spacelift\n\ntrack { true }\n");
    let ignorer = compile("package spacelift\n\nignore { input.push.author == \"bot\" }\n");
    let mut bot = push_to("main", &[]);
    bot.push.author = "bot".to_string();
    let combined = PushDecision::combine([decide(&tracker, &bot), decide(&ignorer, &bot)]);
    assert_eq!(
        resolve_push(&combined, &PushContext::default()).action,
        IGNORED
    );
    let human = push_to("main", &[]);
    let combined = PushDecision::combine([decide(&tracker, &human), decide(&ignorer, &human)]);
    assert_eq!(
        resolve_push(&combined, &PushContext::default()).action,
        TRACK
    );
}
