//! Compilation, safety and evaluation properties of the engine; plan and approval examples.

use std::sync::Arc;
use std::time::Duration;

use cairn_policy::input::{
    ApprovalInput, PlanContext, PlanInput, Review, ReviewSession, ReviewSet, Reviews, RunInfo,
    StackInfo, WorkerPoolInfo,
};
use cairn_policy::{
    sanitize, ApprovalDecision, ApprovalOutcome, CompiledPolicy, Decision, PlanDecision,
    PolicyCache, PolicyError, PolicyKind, PolicyOptions, RegoSyntax,
};
use serde_json::json;

fn compile(kind: PolicyKind, body: &str) -> Result<CompiledPolicy, PolicyError> {
    CompiledPolicy::compile("p", 1, kind, body, PolicyOptions::default())
}

fn compile_ok(kind: PolicyKind, body: &str) -> CompiledPolicy {
    compile(kind, body).unwrap_or_else(|e| panic!("compile: {e}"))
}

fn location(err: PolicyError) -> (u32, u32, String) {
    match err {
        PolicyError::Compile {
            line,
            column,
            message,
        } => (line, column, message),
        other => panic!("expected a compile error, got {other:?}"),
    }
}

#[test]
fn syntax_errors_carry_line_and_column() {
    let (line, column, message) = location(
        compile(
            PolicyKind::Push,
            "package spacelift\n\ntrack {\n  input.push.branch == \n}\n",
        )
        .expect_err("must fail"),
    );
    assert_eq!(line, 3);
    assert!(column > 0);
    assert!(!message.is_empty());
}

#[test]
fn analysis_errors_carry_line_and_column() {
    let (line, column, message) = location(
        compile(
            PolicyKind::Push,
            "package spacelift\n\ntrack {\n  x == 1\n}\n",
        )
        .expect_err("unsafe variable"),
    );
    assert_eq!((line, column), (4, 3));
    assert!(message.contains("unsafe"), "{message}");
}

#[test]
fn undefined_functions_are_compile_errors() {
    let (line, column, message) = location(
        compile(
            PolicyKind::Push,
            "package spacelift\n\ntrack {\n  not_a_builtin(1)\n}\n",
        )
        .expect_err("undefined function"),
    );
    assert_eq!((line, column), (4, 3));
    assert!(message.contains("not_a_builtin"));
    // User functions, builtins, `data.` references and the sanitized extension are fine.
    compile_ok(
        PolicyKind::Push,
        "package spacelift\n\nf(x) = upper(x)\ntrack { f(\"a\") == \"A\"; data.spacelift.f(\"b\") == \"B\"; sanitized(\"a\") != \"a\" }\n",
    );
}

#[test]
fn recursive_functions_are_compile_errors() {
    let (line, _, message) = location(
        compile(
            PolicyKind::Push,
            "package spacelift\n\nf(x) = y { y := g(x) }\ng(x) = y { y := f(x) }\ntrack { f(1) }\n",
        )
        .expect_err("recursion"),
    );
    assert_eq!(line, 3);
    assert!(message.contains("f -> g -> f"), "{message}");
}

#[test]
fn recursive_rules_fail_at_evaluation_without_crashing() {
    let p = compile_ok(
        PolicyKind::Push,
        "package spacelift\n\ntrack { propose }\npropose { track }\n",
    );
    let err = p.evaluate_json(&json!({})).expect_err("recursion");
    assert!(matches!(err, PolicyError::Evaluation(ref m) if m.contains("recursion")));
}

#[test]
fn policies_must_use_package_spacelift() {
    let (line, column, message) =
        location(compile(PolicyKind::Push, "package other\n\ntrack { true }\n").expect_err("pkg"));
    assert_eq!((line, column), (1, 1));
    assert!(message.contains("package spacelift"));
}

#[test]
fn network_and_runtime_builtins_are_refused_with_position() {
    for (body, name, line, column) in [
        (
            "package spacelift\n\ntrack {\n  resp := http.send({\"method\": \"get\", \"url\": \"https://example.invalid\"})\n  resp.status_code == 200\n}\n",
            "http.send",
            4,
            11,
        ),
        (
            "package spacelift\n\ntrack { opa.runtime().env.X == \"1\" }\n",
            "opa.runtime",
            3,
            9,
        ),
        (
            "package spacelift\n\ntrack { net.lookup_ip_addr(\"example.invalid\") }\n",
            "net.lookup_ip_addr",
            3,
            9,
        ),
        (
            "package spacelift\n\ntrack { time.now_ns() > 0 }\n",
            "time.now_ns",
            3,
            9,
        ),
    ] {
        match compile(PolicyKind::Push, body) {
            Err(PolicyError::ForbiddenBuiltin {
                name: got,
                line: l,
                column: c,
            }) => assert_eq!((got.as_str(), l, c), (name, line, column)),
            other => panic!("{name}: unexpected {other:?}"),
        }
    }
}

#[test]
fn rego_v0_v1_and_future_keywords() {
    let v0 = compile_ok(
        PolicyKind::Plan,
        "package spacelift\n\ndeny[\"you shall not pass\"] {\n  true\n}\n\nwarn[\"hey, you look suspicious\"] {\n  true\n}\n",
    );
    let v1 = compile_ok(
        PolicyKind::Plan,
        "package spacelift\n\ndeny contains \"you shall not pass\" if {\n  true\n}\n\nwarn contains \"hey, you look suspicious\" if {\n  true\n}\n",
    );
    let v1_import = compile_ok(
        PolicyKind::Plan,
        "package spacelift\n\nimport rego.v1\n\ndeny contains \"you shall not pass\" if { true }\nwarn contains \"hey, you look suspicious\" if { true }\n",
    );
    let future = compile_ok(
        PolicyKind::Plan,
        "package spacelift\n\nimport future.keywords\n\ndeny contains \"you shall not pass\" if { some x in [1]; x == 1 }\nwarn[\"hey, you look suspicious\"] { every x in [1] { x > 0 } }\n",
    );
    let future_each = compile_ok(
        PolicyKind::Plan,
        "package spacelift\n\nimport future.keywords.in\nimport future.keywords.if\nimport future.keywords.contains\n\ndeny contains \"you shall not pass\" if { 1 in [1] }\nwarn[\"hey, you look suspicious\"] { true }\n",
    );
    assert_eq!(v0.syntax(), RegoSyntax::V0);
    assert_eq!(v1.syntax(), RegoSyntax::V1);
    for p in [&v0, &v1, &v1_import, &future, &future_each] {
        match p.decide(&PlanInput::default()).expect("evaluate") {
            Decision::Plan(d) => {
                assert_eq!(d.deny, ["you shall not pass".to_string()].into());
                assert_eq!(d.warn, ["hey, you look suspicious".to_string()].into());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn sanitized_builtin_matches_spacelift() {
    let p = compile_ok(
        PolicyKind::Plan,
        r#"package spacelift

deny["must not target the forbidden endpoint: forbidden.endpoint/webhook"] {
  resource := input.terraform.resource_changes[_]

  actions := {"create", "delete", "update"}
  actions[resource.change.actions[_]]

  resource.change.after.endpoint == sanitized("forbidden.endpoint/webhook")
}
"#,
    );
    let plan = |endpoint: &str| PlanInput {
        terraform: Some(json!({"resource_changes": [{
            "address": "webhook.x", "type": "webhook", "name": "x",
            "change": {"actions": ["create"], "after": {"endpoint": sanitize(endpoint)}}
        }]})),
        ..PlanInput::default()
    };
    let deny = |i: &PlanInput| match p.decide(i).expect("evaluate") {
        Decision::Plan(d) => d.denied(),
        other => panic!("unexpected {other:?}"),
    };
    assert!(deny(&plan("forbidden.endpoint/webhook")));
    assert!(!deny(&plan("fine.endpoint/webhook")));

    // The documented out-parameter form and the v1 form.
    let q = compile_ok(
        PolicyKind::Plan,
        r#"package spacelift
import future.keywords

allowed_instance_classes := ["db.t3.micro", "db.t3.small", "db.t3.medium"]

sanitized_allowed_instance_classes := {c | sanitized(allowed_instance_classes[_], c)}

deny["Instance class is not allowed"] {
  resource := input.terraform.resource_changes[_]
  not resource.change.after.instance_class in sanitized_allowed_instance_classes
}

deny["Username cannot be 'admin'"] {
  resource := input.terraform.resource_changes[_]
  resource.change.after.username = sanitized("admin")
}
"#,
    );
    let rds = |class: &str, user: &str| PlanInput {
        terraform: Some(json!({"resource_changes": [{
            "address": "aws_db_instance.example",
            "change": {"actions": ["create"], "after": {
                "instance_class": sanitize(class), "username": sanitize(user)
            }}
        }]})),
        ..PlanInput::default()
    };
    let reasons = |i: &PlanInput| match q.decide(i).expect("evaluate") {
        Decision::Plan(d) => d.deny,
        other => panic!("unexpected {other:?}"),
    };
    assert!(reasons(&rds("db.t3.micro", "app")).is_empty());
    assert_eq!(
        reasons(&rds("db.r5.large", "admin")),
        [
            "Instance class is not allowed".to_string(),
            "Username cannot be 'admin'".to_string()
        ]
        .into()
    );
}

#[test]
fn plan_policy_static_credentials_and_combination() {
    let p = compile_ok(
        PolicyKind::Plan,
        r#"package spacelift

deny contains sprintf(message, [resource.address]) if {
  message := "static AWS credentials are evil (%s)"
  some resource in input.terraform.resource_changes
  some action in resource.change.actions
  action == "create"
  resource.type == "aws_iam_access_key"
}

warn contains sprintf("%s is a new resource", [resource.address]) if {
  some resource in input.terraform.resource_changes
  "create" in resource.change.actions
}

flag contains "plan:reviewed" if { true }
"#,
    );
    let input = PlanInput {
        spacelift: PlanContext {
            run: RunInfo {
                id: "r1".into(),
                r#type: "TRACKED".into(),
                ..RunInfo::default()
            },
            ..PlanContext::default()
        },
        terraform: Some(json!({"resource_changes": [
            {"address": "aws_iam_access_key.ci", "type": "aws_iam_access_key", "change": {"actions": ["create"]}},
            {"address": "aws_s3_bucket.b", "type": "aws_s3_bucket", "change": {"actions": ["update"]}}
        ]})),
        ..PlanInput::default()
    };
    let d = match p.decide(&input).expect("evaluate") {
        Decision::Plan(d) => d,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(
        d.deny,
        ["static AWS credentials are evil (aws_iam_access_key.ci)".to_string()].into()
    );
    assert_eq!(
        d.warn,
        ["aws_iam_access_key.ci is a new resource".to_string()].into()
    );
    assert_eq!(d.flag, ["plan:reviewed".to_string()].into());
    let quiet = PlanDecision::default();
    let combined = PlanDecision::combine([quiet, d]);
    assert!(combined.denied());
}

fn approval_input(
    state: &str,
    ty: &str,
    approvals: &[&[&str]],
    rejections: usize,
) -> ApprovalInput {
    let review = |teams: &[&str]| Review {
        author: "someone".into(),
        session: ReviewSession {
            login: "someone".into(),
            teams: teams.iter().map(|s| s.to_string()).collect(),
            ..ReviewSession::default()
        },
        state: state.into(),
        ..Review::default()
    };
    ApprovalInput {
        reviews: Reviews {
            current: ReviewSet {
                approvals: approvals.iter().map(|t| review(t)).collect(),
                rejections: (0..rejections).map(|_| review(&[])).collect(),
            },
            older: vec![],
        },
        run: RunInfo {
            id: "r1".into(),
            state: state.into(),
            r#type: ty.into(),
            ..RunInfo::default()
        },
        stack: StackInfo {
            id: "s".into(),
            worker_pool: WorkerPoolInfo {
                public: false,
                ..WorkerPoolInfo::default()
            },
            ..StackInfo::default()
        },
    }
}

fn approval(p: &CompiledPolicy, i: &ApprovalInput) -> ApprovalDecision {
    match p.decide(i).expect("evaluate") {
        Decision::Approval(d) => d,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn approval_policies() {
    let two_to_approve = compile_ok(
        PolicyKind::Approval,
        r#"package spacelift

approve { input.run.state != "UNCONFIRMED" }
approve { count(input.reviews.current.approvals) > 1 }
reject  { count(input.reviews.current.rejections) > 1 }
"#,
    );
    let one = approval(
        &two_to_approve,
        &approval_input("UNCONFIRMED", "TRACKED", &[&[]], 0),
    );
    assert!(!one.approve && !one.reject);
    let two = approval(
        &two_to_approve,
        &approval_input("UNCONFIRMED", "TRACKED", &[&[], &[]], 0),
    );
    assert!(two.approve);
    let rejected = approval(
        &two_to_approve,
        &approval_input("UNCONFIRMED", "TRACKED", &[], 2),
    );
    assert!(rejected.reject);

    let roles = compile_ok(
        PolicyKind::Approval,
        r#"package spacelift

requires_approval { input.run.state == "UNCONFIRMED" }
requires_approval { input.run.type == "TASK" }
approve           { not requires_approval }

approvals := input.reviews.current.approvals

director_approval { approvals[_].session.teams[_] == "Director" }
devops_approval   { approvals[_].session.teams[_] == "DevOps" }
security_approval { approvals[_].session.teams[_] == "Security" }

approve { director_approval }
approve { devops_approval; security_approval }
"#,
    );
    let i = approval_input("UNCONFIRMED", "TRACKED", &[&["DevOps"]], 0);
    assert!(!approval(&roles, &i).approve);
    let i = approval_input("UNCONFIRMED", "TRACKED", &[&["DevOps"], &["Security"]], 0);
    assert!(approval(&roles, &i).approve);
    let i = approval_input("UNCONFIRMED", "TRACKED", &[&["Director"]], 0);
    assert!(approval(&roles, &i).approve);

    let private_pool = compile_ok(
        PolicyKind::Approval,
        "package spacelift\n\napprove { not input.stack.worker_pool.public }\nreject { input.stack.worker_pool.public }\n",
    );
    let i = approval_input("QUEUED", "TRACKED", &[], 0);
    let decisions = [approval(&private_pool, &i), approval(&roles, &i)];
    assert_eq!(
        ApprovalDecision::resolve(&decisions),
        ApprovalOutcome::Approved
    );
    let i = approval_input("UNCONFIRMED", "TRACKED", &[&["DevOps"]], 0);
    let decisions = [approval(&private_pool, &i), approval(&roles, &i)];
    assert_eq!(
        ApprovalDecision::resolve(&decisions),
        ApprovalOutcome::Undecided
    );
}

#[test]
fn wrong_decision_types_are_reported() {
    let p = compile_ok(PolicyKind::Push, "package spacelift\n\ntrack := \"yes\"\n");
    let err = p.decide(&json!({})).expect_err("wrong type");
    assert!(matches!(err, PolicyError::Decision { ref rule, .. } if rule == "track"));
}

#[test]
fn looping_policy_times_out_and_fails_closed() {
    let p = CompiledPolicy::compile(
        "slow",
        1,
        PolicyKind::Plan,
        r#"package spacelift

deny[msg] {
  xs := numbers.range(1, 100000)
  some i, j
  xs[i] + xs[j] == -1
  msg := "unreachable"
}
"#,
        PolicyOptions {
            timeout: Duration::from_millis(100),
        },
    )
    .expect("compile");
    match p.decide(&json!({})) {
        Err(PolicyError::Timeout { budget }) => assert_eq!(budget, Duration::from_millis(100)),
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[test]
fn evaluates_concurrently_from_many_threads() {
    let p = Arc::new(compile_ok(
        PolicyKind::Trigger,
        "package spacelift\n\ntrigger[stack.id] {\n  stack := input.stacks[_]\n  stack.labels[_] == concat(\"\", [\"depends-on:\", input.stack.id])\n}\n",
    ));
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let p = p.clone();
            std::thread::spawn(move || {
                for n in 0..20 {
                    let parent = format!("parent-{t}-{n}");
                    let input = json!({
                        "stack": {"id": parent},
                        "stacks": [
                            {"id": format!("child-{t}-{n}"), "labels": [format!("depends-on:{parent}")]},
                            {"id": "unrelated", "labels": ["depends-on:nobody"]}
                        ]
                    });
                    match p.decide(&input).expect("evaluate") {
                        Decision::Trigger(d) => {
                            assert_eq!(d.trigger, [format!("child-{t}-{n}")].into())
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
}

#[test]
fn cache_compiles_once_per_version() {
    let cache = PolicyCache::new(PolicyOptions::default());
    let a = cache
        .get_or_compile(
            "p",
            1,
            PolicyKind::Push,
            "package spacelift\n\ntrack { true }\n",
        )
        .expect("compile");
    let again = cache
        .get_or_compile("p", 1, PolicyKind::Push, "ignored: already compiled")
        .expect("cached");
    assert!(Arc::ptr_eq(&a, &again));
    let b = cache
        .get_or_compile(
            "p",
            2,
            PolicyKind::Push,
            "package spacelift\n\npropose { true }\n",
        )
        .expect("compile");
    assert_eq!(b.version(), 2);
    assert_eq!(cache.len(), 1);
    cache.remove("p");
    assert!(cache.is_empty());
}

#[test]
fn sample_rule_and_raw_document() {
    let p = compile_ok(
        PolicyKind::Push,
        "package spacelift\n\ntrack { true }\nsample { true }\nhelper := 3\n",
    );
    let e = p.evaluate_json(&json!({})).expect("evaluate");
    assert!(e.sample());
    assert_eq!(e.document["helper"], json!(3));
}
