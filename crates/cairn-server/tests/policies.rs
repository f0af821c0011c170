//! Policies end to end: a real server, the policy API over gRPC, and the test agent finishing
//! runs so that trigger, plan and approval policies act on real state changes.

mod common;

use std::time::Duration;

use cairn_policy::input::PushCommit;
use cairn_proto::agent::v1 as apb;
use cairn_proto::v1 as pb;
use cairn_server::policies::push::{handle_push, PushEvent};
use common::*;
use tonic::Code;

async fn create_policy(
    s: &TestServer,
    id: &str,
    kind: pb::PolicyType,
    body: &str,
    labels: &[&str],
) -> pb::Policy {
    s.policies(&s.admin)
        .create_policy(pb::CreatePolicyRequest {
            policy: Some(pb::Policy {
                id: id.into(),
                name: format!("Policy {id}"),
                r#type: kind as i32,
                body: body.into(),
                labels: labels.iter().map(|l| l.to_string()).collect(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap()
}

async fn attach(s: &TestServer, policy: &str, stack: &str) {
    s.policies(&s.admin)
        .attach_policy(pb::AttachPolicyRequest {
            policy_id: policy.into(),
            stack_id: stack.into(),
        })
        .await
        .unwrap();
}

async fn runs_of(s: &TestServer, stack: &str) -> Vec<pb::Run> {
    s.runs(&s.admin)
        .list_runs(pb::ListRunsRequest {
            stack_id: stack.into(),
            page: None,
        })
        .await
        .unwrap()
        .into_inner()
        .runs
}

/// Polls until `stack` has at least `n` runs (newest first).
async fn wait_runs(s: &TestServer, stack: &str, n: usize) -> Vec<pb::Run> {
    for _ in 0..3000 {
        let runs = runs_of(s, stack).await;
        if runs.len() >= n {
            return runs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("stack {stack} never had {n} runs");
}

async fn samples(s: &TestServer, policy: &str) -> Vec<pb::PolicySample> {
    s.policies(&s.admin)
        .list_policy_samples(pb::ListPolicySamplesRequest {
            policy_id: policy.into(),
            page: None,
        })
        .await
        .unwrap()
        .into_inner()
        .samples
}

/// Polls until `policy` has at least `n` samples (newest first).
async fn wait_samples(s: &TestServer, policy: &str, n: usize) -> Vec<pb::PolicySample> {
    for _ in 0..3000 {
        let got = samples(s, policy).await;
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("policy {policy} never had {n} samples");
}

/// Takes the next lease and plans it as a no-op: the run finishes.
async fn finish_next(s: &TestServer, agent: &mut TestAgent) -> String {
    let lease = agent.lease().await;
    agent.plan_through(&lease, &[]).await;
    s.wait_state(&lease.run_id, pb::RunState::Finished).await;
    lease.run_id
}

/// Takes the next lease and fails it.
async fn fail_next(s: &TestServer, agent: &mut TestAgent) -> String {
    let lease = agent.lease().await;
    agent
        .event(
            &lease,
            apb::job_event::Event::Failed(apb::JobFailed {
                reason: "transient cloud API error".into(),
            }),
        )
        .await;
    s.wait_state(&lease.run_id, pb::RunState::Failed).await;
    lease.run_id
}

/// A stack with labels tracking SHA_A.
async fn labeled_stack(s: &TestServer, id: &str, labels: &[&str]) {
    let mut input = stack_input(id, false);
    input.labels = labels.iter().map(|l| l.to_string()).collect();
    let mut c = s.stacks(&s.admin);
    c.create_stack(pb::CreateStackRequest {
        stack: Some(input),
        env: vec![],
    })
    .await
    .unwrap();
    c.sync_stack(pb::SyncStackRequest {
        stack_id: id.into(),
        commit: Some(pb::Commit {
            hash: SHA_A.into(),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
}

const HARDCODED: &str = r#"package spacelift
trigger["stack-one"] { finished }
trigger["stack-two"] { finished }
trigger["stack-three"] { finished }
trigger["stack-gone"] { finished }
finished {
  input.run.state == "FINISHED"
  input.run.type == "TRACKED"
}
"#;

#[tokio::test]
async fn hardcoded_list_triggers_each_stack_in_the_same_workflow() {
    let s = TestServer::start().await;
    for id in ["root", "stack-one", "stack-two", "stack-three"] {
        s.stack(id, false, SHA_A).await;
    }
    create_policy(&s, "fanout", pb::PolicyType::Trigger, HARDCODED, &[]).await;
    attach(&s, "fanout", "root").await;
    let mut agent = TestAgent::connect(&s, 4).await;
    let root = s.trigger("root", pb::RunType::Tracked).await;
    finish_next(&s, &mut agent).await;

    for id in ["stack-one", "stack-two", "stack-three"] {
        let runs = wait_runs(&s, id, 1).await;
        assert_eq!(runs.len(), 1, "{id}");
        let run = &runs[0];
        assert_eq!(run.triggered_by, "trigger_policy:fanout");
        assert_eq!(run.workflow_id, root.id);
        assert_eq!(run.r#type(), pb::RunType::Tracked);
        assert_eq!(run.commit.as_ref().unwrap().hash, SHA_A);
    }
    let sample = &wait_samples(&s, "fanout", 1).await[0];
    assert_eq!(sample.policy_version, 1);
    assert!(sample.error.is_empty());
    let decision: serde_json::Value = serde_json::from_str(&sample.decision_json).unwrap();
    let notes = decision["notes"].to_string();
    assert!(
        notes.contains("\\\"stack-gone\\\" does not exist"),
        "{notes}"
    );
    let input: serde_json::Value = serde_json::from_str(&sample.input_json).unwrap();
    assert_eq!(input["run"]["id"], root.id.as_str());
    assert_eq!(input["stacks"].as_array().unwrap().len(), 4);
    assert_eq!(input["workflow"].as_array().unwrap().len(), 1);

    // The triggered runs finish; the policy is attached to root only: nothing more happens.
    for _ in 0..3 {
        finish_next(&s, &mut agent).await;
    }
    assert_eq!(samples(&s, "fanout").await.len(), 1);
    assert_eq!(runs_of(&s, "root").await.len(), 1);
}

const DEPENDS_ON: &str = r#"package spacelift
trigger[stack.id] {
  stack := input.stacks[_]
  input.run.state == "FINISHED"
  input.run.type == "TRACKED"
  stack.labels[_] == concat("", ["depends-on:", input.stack.id])
}
"#;

#[tokio::test]
async fn depends_on_labels_with_an_autoattached_policy() {
    let s = TestServer::start().await;
    labeled_stack(&s, "parent", &["infra"]).await;
    labeled_stack(&s, "child", &["infra", "depends-on:parent"]).await;
    labeled_stack(&s, "grandchild", &["depends-on:child"]).await;
    labeled_stack(&s, "unrelated", &["infra"]).await;
    create_policy(
        &s,
        "deps",
        pb::PolicyType::Trigger,
        DEPENDS_ON,
        &["autoattach:infra"],
    )
    .await;
    let mut agent = TestAgent::connect(&s, 2).await;
    s.trigger("parent", pb::RunType::Tracked).await;
    finish_next(&s, &mut agent).await;
    let child = wait_runs(&s, "child", 1).await;
    assert_eq!(child[0].triggered_by, "trigger_policy:deps");
    finish_next(&s, &mut agent).await;
    // The policy is attached to `child` by its label, so it runs there too.
    let grandchild = wait_runs(&s, "grandchild", 1).await;
    assert_eq!(grandchild[0].workflow_id, child[0].workflow_id);
    // `grandchild` lacks the label: its run finishing evaluates nothing.
    finish_next(&s, &mut agent).await;
    assert_eq!(wait_samples(&s, "deps", 2).await.len(), 2);
    assert!(runs_of(&s, "unrelated").await.is_empty());
}

const LABELS_WITH_STATE: &str = r#"package spacelift
trigger[stack.id] {
  stack := input.stacks[_]
  input.run.type == "TRACKED"
  stack.labels[_] == concat("", [
    "depends-on:", input.stack.id,
    "|state:", input.run.state],
  )
}
"#;

#[tokio::test]
async fn labels_with_state_react_to_the_state_they_name() {
    let s = TestServer::start().await;
    labeled_stack(&s, "core", &[]).await;
    labeled_stack(&s, "on-fail", &["depends-on:core|state:FAILED"]).await;
    labeled_stack(&s, "on-finish", &["depends-on:core|state:FINISHED"]).await;
    create_policy(
        &s,
        "by-state",
        pb::PolicyType::Trigger,
        LABELS_WITH_STATE,
        &[],
    )
    .await;
    attach(&s, "by-state", "core").await;
    let mut agent = TestAgent::connect(&s, 1).await;
    s.trigger("core", pb::RunType::Tracked).await;
    fail_next(&s, &mut agent).await;
    let runs = wait_runs(&s, "on-fail", 1).await;
    assert_eq!(runs[0].triggered_by, "trigger_policy:by-state");
    wait_samples(&s, "by-state", 1).await;
    assert!(runs_of(&s, "on-finish").await.is_empty());
}

const RETRIES: &str = r#"package spacelift
trigger[stack.id] {
  stack := input.stack
  input.run.state == "FAILED"
  input.run.type == "TRACKED"
  is_null(input.run.triggered_by)
}
"#;

fn push_to_main(repo: &str, sha: &str, files: &[&str]) -> PushEvent {
    PushEvent {
        repository: repo.into(),
        commit: cairn_core::Commit {
            hash: sha.into(),
            branch: "main".into(),
            author: "alice".into(),
            message: "change".into(),
            created_at: 1,
        },
        push: PushCommit {
            affected_files: files.iter().map(|f| f.to_string()).collect(),
            author: "alice".into(),
            branch: "main".into(),
            message: "change".into(),
            ..Default::default()
        },
        pull_request: None,
        from_fork: false,
    }
}

#[tokio::test]
async fn automated_retries_stop_at_the_triggered_by_guard() {
    let s = TestServer::start().await;
    s.stack("flaky", false, SHA_A).await;
    create_policy(&s, "retry", pb::PolicyType::Trigger, RETRIES, &[]).await;
    attach(&s, "retry", "flaky").await;
    let mut agent = TestAgent::connect(&s, 1).await;
    // A push (default push behaviour: tracked branch, project root touched) starts a run
    // whose triggered_by is null in policy inputs.
    let results = handle_push(
        &s.state,
        &push_to_main("file:///nonexistent/infra.git", SHA_B, &["network/main.tf"]),
    )
    .await
    .unwrap();
    let first = results[0].run.clone().expect("a tracked run");
    assert_eq!(first.triggered_by, "git:push");
    assert_eq!(fail_next(&s, &mut agent).await, first.id);
    let runs = wait_runs(&s, "flaky", 2).await;
    let retry = &runs[0];
    assert_eq!(retry.triggered_by, "trigger_policy:retry");
    assert_eq!(retry.workflow_id, first.id);
    assert_eq!(
        retry.commit.as_ref().unwrap().hash,
        SHA_B,
        "head commit after the push"
    );
    // The retry fails too, but it was triggered by a policy: no third run.
    fail_next(&s, &mut agent).await;
    wait_samples(&s, "retry", 2).await;
    assert_eq!(runs_of(&s, "flaky").await.len(), 2);
}

const DIAMOND_ROOT: &str = r#"package spacelift
trigger["stack-2a"] { tracked_and_finished }
trigger["stack-2b"] { tracked_and_finished }
tracked_and_finished {
  input.run.state == "FINISHED"
  input.run.type == "TRACKED"
}
"#;

const DIAMOND_MIDDLE: &str = r#"package spacelift
trigger["stack-3"] {
  run_a := input.workflow[_]
  run_b := input.workflow[_]
  run_a.stack_id == "stack-2a"
  run_b.stack_id == "stack-2b"
  run_a.state == "FINISHED"
  run_b.state == "FINISHED"
}
"#;

#[tokio::test]
async fn diamond_runs_the_last_stack_once_after_both_predecessors() {
    let s = TestServer::start().await;
    for id in ["stack-1", "stack-2a", "stack-2b", "stack-3"] {
        s.stack(id, false, SHA_A).await;
    }
    create_policy(
        &s,
        "diamond-root",
        pb::PolicyType::Trigger,
        DIAMOND_ROOT,
        &[],
    )
    .await;
    attach(&s, "diamond-root", "stack-1").await;
    create_policy(
        &s,
        "diamond-middle",
        pb::PolicyType::Trigger,
        DIAMOND_MIDDLE,
        &[],
    )
    .await;
    attach(&s, "diamond-middle", "stack-2a").await;
    attach(&s, "diamond-middle", "stack-2b").await;
    let mut agent = TestAgent::connect(&s, 2).await;
    s.trigger("stack-1", pb::RunType::Tracked).await;
    finish_next(&s, &mut agent).await;

    // 2a finishes alone: its evaluation sees 2b unfinished.
    let l1 = agent.lease().await;
    let l2 = agent.lease().await;
    let (la, lb) = if l1.stack_id == "stack-2a" {
        (l1, l2)
    } else {
        (l2, l1)
    };
    agent.plan_through(&la, &[]).await;
    s.wait_state(&la.run_id, pb::RunState::Finished).await;
    wait_samples(&s, "diamond-middle", 1).await;
    assert!(runs_of(&s, "stack-3").await.is_empty());

    agent.plan_through(&lb, &[]).await;
    let b = s.wait_state(&lb.run_id, pb::RunState::Finished).await;
    let three = wait_runs(&s, "stack-3", 1).await;
    assert_eq!(three.len(), 1);
    assert!(three[0].created_at >= b.updated_at);
    wait_samples(&s, "diamond-middle", 2).await;

    // Stack 3 finishing evaluates nothing (no policy there); still one run.
    finish_next(&s, &mut agent).await;
    assert_eq!(runs_of(&s, "stack-3").await.len(), 1);
}

#[tokio::test]
async fn diamond_predecessors_finishing_together_still_trigger_once() {
    let s = TestServer::start().await;
    for id in ["stack-1", "stack-2a", "stack-2b", "stack-3"] {
        s.stack(id, false, SHA_A).await;
    }
    create_policy(
        &s,
        "diamond-root",
        pb::PolicyType::Trigger,
        DIAMOND_ROOT,
        &[],
    )
    .await;
    attach(&s, "diamond-root", "stack-1").await;
    create_policy(
        &s,
        "diamond-middle",
        pb::PolicyType::Trigger,
        DIAMOND_MIDDLE,
        &["autoattach:middle"],
    )
    .await;
    // Autoattach by label for the middle stacks this time.
    for id in ["stack-2a", "stack-2b"] {
        let mut st = s
            .stacks(&s.admin)
            .get_stack(pb::GetStackRequest {
                stack_id: id.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .stack
            .unwrap();
        st.labels = vec!["middle".into()];
        s.stacks(&s.admin)
            .update_stack(pb::UpdateStackRequest { stack: Some(st) })
            .await
            .unwrap();
    }
    let mut agent = TestAgent::connect(&s, 2).await;
    s.trigger("stack-1", pb::RunType::Tracked).await;
    finish_next(&s, &mut agent).await;
    let l1 = agent.lease().await;
    let l2 = agent.lease().await;
    // Both plan results are sent back to back; whichever evaluation runs second may already
    // see both finished.
    agent.plan_through(&l1, &[]).await;
    agent.plan_through(&l2, &[]).await;
    s.wait_state(&l1.run_id, pb::RunState::Finished).await;
    s.wait_state(&l2.run_id, pb::RunState::Finished).await;
    wait_samples(&s, "diamond-middle", 2).await;
    assert_eq!(wait_runs(&s, "stack-3", 1).await.len(), 1);
}

#[tokio::test]
async fn a_self_triggering_workflow_stops_at_the_cap() {
    let s =
        TestServer::start_configured(Duration::from_secs(30), None, |c| c.max_workflow_runs = 3)
            .await;
    s.stack("loop", false, SHA_A).await;
    create_policy(
        &s,
        "forever",
        pb::PolicyType::Trigger,
        "package spacelift\ntrigger[\"loop\"] { true }\nflag[\"looped\"] { true }\n",
        &[],
    )
    .await;
    attach(&s, "forever", "loop").await;
    let mut agent = TestAgent::connect(&s, 1).await;
    s.trigger("loop", pb::RunType::Tracked).await;
    for _ in 0..3 {
        finish_next(&s, &mut agent).await;
    }
    let samples = wait_samples(&s, "forever", 3).await;
    let runs = runs_of(&s, "loop").await;
    assert_eq!(runs.len(), 3);
    assert!(runs.iter().all(|r| r.workflow_id == runs[2].id));
    assert!(
        samples[0].decision_json.contains("max_workflow_runs = 3"),
        "{}",
        samples[0].decision_json
    );
    // The `flag` rule marked each evaluated run.
    let oldest = s.get_run(&runs[2].id).await;
    assert_eq!(oldest.flags, vec!["looped".to_string()]);
}

const PLAN_DENY: &str = r#"package spacelift
deny[sprintf("must not create %s", [change.entity.address])] {
  change := input.spacelift.run.changes[_]
  change.action == "added"
  startswith(change.entity.address, "aws_s3_bucket.forbidden")
}
warn["buckets are expensive"] {
  input.spacelift.run.changes[_].entity.type == "aws_s3_bucket"
}
flag["plan-reviewed"] { true }
"#;

#[tokio::test]
async fn plan_policy_denies_and_warns() {
    let s = TestServer::start().await;
    s.stack("app", false, SHA_A).await;
    create_policy(&s, "guard", pb::PolicyType::Plan, PLAN_DENY, &[]).await;
    attach(&s, "guard", "app").await;
    let mut agent = TestAgent::connect(&s, 1).await;

    let run = s.trigger("app", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    agent
        .plan_through(&lease, &["aws_s3_bucket.forbidden", "aws_s3_bucket.ok"])
        .await;
    let failed = s.wait_state(&run.id, pb::RunState::Failed).await;
    assert_eq!(
        failed.policy_denies,
        vec!["must not create aws_s3_bucket.forbidden".to_string()]
    );
    assert!(failed.error.contains("must not create"), "{}", failed.error);
    assert_eq!(failed.flags, vec!["plan-reviewed".to_string()]);

    // Warnings only: the run waits for confirmation with the warning recorded.
    let run = s.trigger("app", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    agent.plan_through(&lease, &["aws_s3_bucket.ok"]).await;
    agent
        .event(
            &lease,
            apb::job_event::Event::WorkspaceStored(apb::WorkspaceStored::default()),
        )
        .await;
    let waiting = s.wait_state(&run.id, pb::RunState::Unconfirmed).await;
    assert_eq!(
        waiting.policy_warnings,
        vec!["buckets are expensive".to_string()]
    );
    assert!(waiting.policy_denies.is_empty());
    let sample = &wait_samples(&s, "guard", 2).await[0];
    let input: serde_json::Value = serde_json::from_str(&sample.input_json).unwrap();
    assert_eq!(input["spacelift"]["run"]["id"], run.id.as_str());
    assert_eq!(input["spacelift"]["stack"]["id"], "app");
    assert!(input["terraform"].is_object());
}

const APPROVAL: &str = r#"package spacelift
approve { count(input.reviews.current.approvals) >= 1 }
reject { count(input.reviews.current.rejections) > 0 }
"#;

async fn review(
    s: &TestServer,
    key: &str,
    run: &str,
    approve: bool,
) -> Result<pb::Run, tonic::Status> {
    s.runs(key)
        .review_run(pb::ReviewRunRequest {
            run_id: run.into(),
            approve,
            note: String::new(),
        })
        .await
        .map(|r| r.into_inner().run.unwrap())
}

#[tokio::test]
async fn approval_policy_gates_queued_and_unconfirmed_runs() {
    let s = TestServer::start().await;
    s.stack("prod", false, SHA_A).await;
    create_policy(&s, "two-eyes", pb::PolicyType::Approval, APPROVAL, &[]).await;
    attach(&s, "two-eyes", "prod").await;
    let writer = s.key("wendy", pb::Role::Writer).await;
    let reader = s.key("rita", pb::Role::Reader).await;
    let mut agent = TestAgent::connect(&s, 1).await;

    let run = s.trigger("prod", pb::RunType::Tracked).await;
    assert_eq!(
        code(review(&s, &reader, &run.id, true).await),
        Code::PermissionDenied
    );
    // Approved while QUEUED: the scheduler hands it out. (Until then it stays queued; the
    // lease below could not arrive otherwise.)
    assert_eq!(s.get_run(&run.id).await.state(), pb::RunState::Queued);
    review(&s, &writer, &run.id, true).await.unwrap();
    let lease = agent.lease().await;
    assert_eq!(lease.run_id, run.id);
    agent.plan_through(&lease, &["aws_s3_bucket.a"]).await;
    agent
        .event(
            &lease,
            apb::job_event::Event::WorkspaceStored(apb::WorkspaceStored::default()),
        )
        .await;
    s.wait_state(&run.id, pb::RunState::Unconfirmed).await;
    wait_samples(&s, "two-eyes", 2).await;
    let confirm = s
        .runs(&s.admin)
        .confirm_run(pb::ConfirmRunRequest {
            run_id: run.id.clone(),
        })
        .await;
    assert_eq!(code(confirm), Code::FailedPrecondition);
    review(&s, &writer, &run.id, true).await.unwrap();
    let confirmed = s
        .runs(&s.admin)
        .confirm_run(pb::ConfirmRunRequest {
            run_id: run.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(confirmed.state(), pb::RunState::Confirmed);
    let sample = &samples(&s, "two-eyes").await[0];
    let input: serde_json::Value = serde_json::from_str(&sample.input_json).unwrap();
    assert_eq!(
        input["reviews"]["current"]["approvals"][0]["author"],
        "wendy"
    );
    assert_eq!(
        input["reviews"]["older"][0]["approvals"][0]["state"],
        "QUEUED"
    );

    // A rejection fails a queued run.
    let run2 = s.trigger("prod", pb::RunType::Tracked).await;
    review(&s, &writer, &run2.id, false).await.unwrap();
    let failed = s.wait_state(&run2.id, pb::RunState::Failed).await;
    assert!(failed.error.contains("rejected"), "{}", failed.error);
}

#[tokio::test]
async fn plan_warnings_with_an_approval_policy_go_to_review() {
    let s = TestServer::start().await;
    s.stack("app", false, SHA_A).await;
    create_policy(&s, "guard", pb::PolicyType::Plan, PLAN_DENY, &[]).await;
    attach(&s, "guard", "app").await;
    // Approves anything not in review, so the queued run starts at once.
    create_policy(
        &s,
        "review-warnings",
        pb::PolicyType::Approval,
        "package spacelift\napprove { input.run.state != \"PENDING_REVIEW\" }\napprove { count(input.reviews.current.approvals) > 0 }\n",
        &["autoattach:*"],
    )
    .await;
    let writer = s.key("wendy", pb::Role::Writer).await;
    let mut agent = TestAgent::connect(&s, 1).await;
    let run = s.trigger("app", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    agent.plan_through(&lease, &["aws_s3_bucket.ok"]).await;
    agent
        .event(
            &lease,
            apb::job_event::Event::WorkspaceStored(apb::WorkspaceStored::default()),
        )
        .await;
    let pending = s.wait_state(&run.id, pb::RunState::PendingReview).await;
    assert_eq!(
        pending.policy_warnings,
        vec!["buckets are expensive".to_string()]
    );
    review(&s, &writer, &run.id, true).await.unwrap();
    // Approved in review: on to UNCONFIRMED, and confirmable (the same plan was reviewed).
    s.wait_state(&run.id, pb::RunState::Unconfirmed).await;
    s.runs(&s.admin)
        .confirm_run(pb::ConfirmRunRequest {
            run_id: run.id.clone(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_policies_are_rejected_at_save_with_a_location_and_nothing_is_stored() {
    let s = TestServer::start().await;
    let mut c = s.policies(&s.admin);
    let bad = c
        .create_policy(pb::CreatePolicyRequest {
            policy: Some(pb::Policy {
                id: "broken".into(),
                name: "Broken".into(),
                r#type: pb::PolicyType::Plan as i32,
                body: "package spacelift\n\ndeny[msg] {\n  msg := \"x\"\n".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("line "), "{}", bad.message());
    assert!(bad.message().contains("column "), "{}", bad.message());
    let net = c
        .create_policy(pb::CreatePolicyRequest {
            policy: Some(pb::Policy {
                id: "phone-home".into(),
                name: "Phone home".into(),
                r#type: pb::PolicyType::Trigger as i32,
                body: "package spacelift\ntrigger[x] { r := http.send({\"method\": \"get\", \"url\": \"http://example.invalid\"}); x := r.body }\n".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(net.code(), Code::InvalidArgument);
    assert!(net.message().contains("http.send"), "{}", net.message());
    let listed = c
        .list_policies(pb::ListPoliciesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .policies;
    assert!(listed.is_empty());

    // A good policy, then a bad update: the stored version stays.
    create_policy(
        &s,
        "ok",
        pb::PolicyType::Plan,
        "package spacelift\nwarn[\"hi\"] { true }\n",
        &[],
    )
    .await;
    let upd = c
        .update_policy(pb::UpdatePolicyRequest {
            policy: Some(pb::Policy {
                id: "ok".into(),
                body: "package spacelift\nwarn[ {\n".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(upd.code(), Code::InvalidArgument);
    let got = c
        .get_policy(pb::GetPolicyRequest {
            policy_id: "ok".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap();
    assert_eq!(got.version, 1);
    let v2 = c
        .update_policy(pb::UpdatePolicyRequest {
            policy: Some(pb::Policy {
                id: "ok".into(),
                body: "package spacelift\nwarn[\"v2\"] { true }\n".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap();
    assert_eq!(v2.version, 2);
    c.delete_policy(pb::DeletePolicyRequest {
        policy_id: "ok".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        code(
            c.get_policy(pb::GetPolicyRequest {
                policy_id: "ok".into()
            })
            .await
        ),
        Code::NotFound
    );
}

#[tokio::test]
async fn simulate_against_an_input_and_a_stored_sample_has_no_side_effects() {
    let s = TestServer::start().await;
    for id in ["root", "stack-one", "stack-two", "stack-three"] {
        s.stack(id, false, SHA_A).await;
    }
    create_policy(&s, "fanout", pb::PolicyType::Trigger, HARDCODED, &[]).await;
    attach(&s, "fanout", "root").await;
    let mut agent = TestAgent::connect(&s, 1).await;
    s.trigger("root", pb::RunType::Tracked).await;
    finish_next(&s, &mut agent).await;
    let sample = wait_samples(&s, "fanout", 1).await.remove(0);
    wait_runs(&s, "stack-one", 1).await;

    let mut c = s.policies(&s.admin);
    let out = c
        .simulate_policy(pb::SimulatePolicyRequest {
            r#type: pb::PolicyType::Trigger as i32,
            body:
                "package spacelift\ntrigger[input.stack.id] { input.run.state == \"FINISHED\" }\n"
                    .into(),
            input: Some(pb::simulate_policy_request::Input::SampleId(
                sample.id.clone(),
            )),
        })
        .await
        .unwrap()
        .into_inner();
    let d: serde_json::Value = serde_json::from_str(&out.decision_json).unwrap();
    assert_eq!(d["trigger"], serde_json::json!(["root"]));
    let out = c
        .simulate_policy(pb::SimulatePolicyRequest {
            r#type: pb::PolicyType::Plan as i32,
            body: PLAN_DENY.into(),
            input: Some(pb::simulate_policy_request::Input::InputJson(
                r#"{"spacelift": {"run": {"changes": [{"action": "added", "entity": {"address": "aws_s3_bucket.forbidden", "type": "aws_s3_bucket"}}]}}}"#.into(),
            )),
        })
        .await
        .unwrap()
        .into_inner();
    let d: serde_json::Value = serde_json::from_str(&out.decision_json).unwrap();
    assert_eq!(
        d["deny"],
        serde_json::json!(["must not create aws_s3_bucket.forbidden"])
    );
    // No side effects: no runs, no samples.
    assert_eq!(samples(&s, "fanout").await.len(), 1);
    assert_eq!(runs_of(&s, "root").await.len(), 1);
    assert_eq!(runs_of(&s, "stack-one").await.len(), 1);
    let bad = c
        .simulate_policy(pb::SimulatePolicyRequest {
            r#type: pb::PolicyType::Plan as i32,
            body: PLAN_DENY.into(),
            input: Some(pb::simulate_policy_request::Input::InputJson(
                "not json".into(),
            )),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}

const PUSH: &str = r#"package spacelift
track { input.push.branch == input.stack.branch; not ignored; not quiet }
propose { input.push.branch != input.stack.branch; not ignored }
ignore { ignored }
ignored { contains(input.push.message, "[skip]") }
quiet { contains(input.push.message, "[notrigger]") }
track { quiet }
notrigger { quiet }
cancel[run.id] { run := input.in_progress[_]; contains(input.push.message, "[cancel]") }
prioritize { contains(input.push.message, "[urgent]") }
lock := "release-bot" { contains(input.push.message, "[lock]") }
unlock := "release-bot" { contains(input.push.message, "[unlock]") }
flag["from-push"] { true }
"#;

fn event(branch: &str, sha: &str, message: &str) -> PushEvent {
    let mut e = push_to_main("file:///nonexistent/infra.git", sha, &["network/main.tf"]);
    e.commit.branch = branch.into();
    e.commit.message = message.into();
    e.push.branch = branch.into();
    e.push.message = message.into();
    e
}

#[tokio::test]
async fn push_policy_tracks_proposes_ignores_cancels_and_locks() {
    let s = TestServer::start().await;
    s.stack("web", false, SHA_A).await;
    create_policy(&s, "push", pb::PolicyType::Push, PUSH, &[]).await;
    attach(&s, "push", "web").await;
    let st = &s.state;
    const C1: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1";
    const C2: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa2";
    const C3: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa3";
    const C4: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa4";
    const C5: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa5";

    // track: a tracked run at the pushed commit, which becomes the head.
    let r = handle_push(st, &event("main", C1, "feature"))
        .await
        .unwrap();
    let tracked = r[0].run.clone().unwrap();
    assert_eq!(tracked.run_type, cairn_core::RunType::Tracked);
    assert_eq!(tracked.flags, vec!["from-push".to_string()]);
    let stack = st.store.get_stack("web").await.unwrap();
    assert_eq!(stack.tracked_commit.unwrap().hash, C1);
    // The same event again (redelivery): no second run for (sha, type).
    let again = handle_push(st, &event("main", C1, "feature"))
        .await
        .unwrap();
    assert!(again[0].run.is_none());
    assert!(again[0].notes.iter().any(|n| n.contains("already exists")));

    // propose: another branch.
    let r = handle_push(st, &event("topic", C2, "wip")).await.unwrap();
    assert_eq!(
        r[0].run.as_ref().unwrap().run_type,
        cairn_core::RunType::Proposed
    );

    // ignore.
    let r = handle_push(st, &event("main", C3, "docs [skip]"))
        .await
        .unwrap();
    assert!(r[0].run.is_none());
    assert_eq!(
        st.store
            .get_stack("web")
            .await
            .unwrap()
            .tracked_commit
            .unwrap()
            .hash,
        C1
    );

    // notrigger: the head moves, no run.
    let r = handle_push(st, &event("main", C3, "bump [notrigger]"))
        .await
        .unwrap();
    assert!(r[0].run.is_none());
    assert_eq!(
        st.store
            .get_stack("web")
            .await
            .unwrap()
            .tracked_commit
            .unwrap()
            .hash,
        C3
    );

    // cancel: only in-progress runs of the new run's type (the queued tracked run, not the
    // proposed one), and prioritize.
    let proposed_id = runs_of(&s, "web")
        .await
        .into_iter()
        .find(|r| r.r#type() == pb::RunType::Proposed)
        .unwrap()
        .id;
    let r = handle_push(st, &event("main", C4, "hotfix [cancel] [urgent]"))
        .await
        .unwrap();
    assert_eq!(r[0].canceled, vec![tracked.id.clone()]);
    let hotfix = r[0].run.clone().unwrap();
    assert!(hotfix.prioritized);
    assert_eq!(s.get_run(&tracked.id).await.state(), pb::RunState::Canceled);
    assert_eq!(s.get_run(&proposed_id).await.state(), pb::RunState::Queued);

    // lock: the stack is locked by the policy's owner; another holder rejects the push.
    let r = handle_push(st, &event("main", C5, "release [lock]"))
        .await
        .unwrap();
    assert!(r[0].run.is_some());
    assert_eq!(
        st.store.get_stack("web").await.unwrap().locked_by,
        "release-bot"
    );
    s.stacks(&s.admin)
        .unlock_stack(pb::UnlockStackRequest {
            stack_id: "web".into(),
            force: true,
        })
        .await
        .unwrap();
    s.stacks(&s.admin)
        .lock_stack(pb::LockStackRequest {
            stack_id: "web".into(),
            note: String::new(),
        })
        .await
        .unwrap();
    let r = handle_push(st, &event("main", SHA_B, "again [lock]"))
        .await
        .unwrap();
    assert!(r[0].run.is_none());
    assert!(matches!(
        r[0].outcome.action,
        cairn_policy::PushAction::Reject { .. }
    ));
    let samples = wait_samples(&s, "push", 8).await;
    assert!(samples.iter().all(|x| x.error.is_empty()));
}

/// One push into a repository of many stacks is handled as a batch (one read of open runs, one
/// write of head commits, one insert of runs); every stack still ends as if handled alone:
/// default behaviour, attached push policies (their samples bounded by `policy_samples_kept`),
/// an outcome that cancels runs, approval policies on the new runs, redelivery.
#[tokio::test]
async fn push_fan_out_handles_every_stack_as_if_alone() {
    let s = TestServer::start_configured(Duration::from_secs(30), None, |c| {
        c.policy_samples_kept = 3;
    })
    .await;
    for i in 0..5 {
        s.stack(&format!("plain-{i}"), false, SHA_A).await;
    }
    for i in 0..4 {
        labeled_stack(&s, &format!("pushy-{i}"), &["pushy"]).await;
    }
    labeled_stack(&s, "gated", &["gated"]).await;
    let mut docs = stack_input("docs", false);
    docs.project_root = "docs".into();
    s.stacks(&s.admin)
        .create_stack(pb::CreateStackRequest {
            stack: Some(docs),
            env: vec![],
        })
        .await
        .unwrap();
    create_policy(
        &s,
        "push",
        pb::PolicyType::Push,
        PUSH,
        &["autoattach:pushy"],
    )
    .await;
    create_policy(
        &s,
        "gate",
        pb::PolicyType::Approval,
        APPROVAL,
        &["autoattach:gated"],
    )
    .await;
    let st = &s.state;
    const C1: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb1";
    const C2: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb2";

    let r = handle_push(st, &event("main", C1, "feature"))
        .await
        .unwrap();
    let ids: Vec<&str> = r.iter().map(|x| x.stack_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "docs", "gated", "plain-0", "plain-1", "plain-2", "plain-3", "plain-4", "pushy-0",
            "pushy-1", "pushy-2", "pushy-3"
        ],
        "stack id order"
    );
    for x in &r {
        let stack = st.store.get_stack(&x.stack_id).await.unwrap();
        if x.stack_id == "docs" {
            // Not under its project root: ignored, head unchanged, no run.
            assert!(x.run.is_none());
            assert!(x.notes[0].starts_with("ignored"), "{:?}", x.notes);
            assert!(stack.tracked_commit.is_none());
            continue;
        }
        let run = x
            .run
            .as_ref()
            .unwrap_or_else(|| panic!("{}: no run", x.stack_id));
        assert_eq!(run.run_type, cairn_core::RunType::Tracked);
        assert_eq!(run.stack_id, x.stack_id);
        assert_eq!(run.triggered_by, "git:push");
        assert_eq!(stack.tracked_commit.unwrap().hash, C1, "{}", x.stack_id);
        let stored = st.store.get_run(&run.id).await.unwrap();
        assert_eq!(&stored, run, "the returned run is the stored one");
        let flags: &[&str] = if x.stack_id.starts_with("pushy") {
            &["from-push"]
        } else {
            &[]
        };
        assert_eq!(run.flags, flags, "{}", x.stack_id);
        assert_eq!(
            x.notes,
            [
                format!("head commit set to {C1}"),
                format!("created TRACKED run {}", run.id)
            ]
        );
    }
    // The approval policy looked at the gated stack's new run, and it alone.
    let stored_samples = |policy: &'static str| async move {
        st.store
            .list_policy_samples(policy, &cairn_store::Page::first(100))
            .await
            .unwrap()
            .items
    };
    let gate = stored_samples("gate").await;
    let gated_run = r[1].run.as_ref().unwrap();
    assert_eq!(gate.len(), 1);
    assert_eq!(gate[0].run_id, gated_run.id);
    // Four evaluations of the push policy, the newest three kept, each naming its stack's run.
    let push_samples = stored_samples("push").await;
    assert_eq!(push_samples.len(), 3);
    let mut sampled: Vec<String> = push_samples.iter().map(|x| x.run_id.clone()).collect();
    sampled.sort();
    let mut expected: Vec<String> = r[8..]
        .iter()
        .map(|x| x.run.as_ref().unwrap().id.clone())
        .collect();
    expected.sort();
    assert_eq!(sampled, expected, "the newest three: pushy-1..3");

    // Redelivery: nothing new anywhere, every stack says why.
    let again = handle_push(st, &event("main", C1, "feature"))
        .await
        .unwrap();
    for (x, first) in again.iter().zip(&r).filter(|(x, _)| x.stack_id != "docs") {
        assert!(x.run.is_none(), "{}", x.stack_id);
        let id = &first.run.as_ref().unwrap().id;
        assert!(
            x.notes
                .iter()
                .any(|n| n.contains(&format!("run {id} already exists"))),
            "{}: {:?}",
            x.stack_id,
            x.notes
        );
    }
    for i in 0..5 {
        assert_eq!(runs_of(&s, &format!("plain-{i}")).await.len(), 1);
    }

    // A push whose policy cancels in-progress runs: those stacks take the one-by-one path
    // (cancel, then create), the plain stacks the batch; both in one call.
    let r2 = handle_push(st, &event("main", C2, "hotfix [cancel]"))
        .await
        .unwrap();
    for x in r2.iter().filter(|x| x.stack_id.starts_with("pushy")) {
        let first = r.iter().find(|f| f.stack_id == x.stack_id).unwrap();
        let old = first.run.as_ref().unwrap().id.clone();
        assert_eq!(x.canceled, vec![old.clone()], "{}", x.stack_id);
        assert_eq!(s.get_run(&old).await.state(), pb::RunState::Canceled);
        assert!(x.run.is_some());
    }
    for x in r2.iter().filter(|x| x.stack_id.starts_with("plain")) {
        assert!(x.canceled.is_empty());
        let runs = runs_of(&s, &x.stack_id).await;
        assert_eq!(runs.len(), 2, "{}", x.stack_id);
        assert_eq!(runs[0].id, x.run.as_ref().unwrap().id);
        // The first run stays queued: the default behaviour cancels nothing.
        assert_eq!(runs[1].state(), pb::RunState::Queued);
    }
}
