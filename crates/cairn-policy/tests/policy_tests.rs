//! `run_tests`: `opa test` over a directory, including the short `with <rule> as` form.

use std::fs;
use std::path::Path;

use cairn_policy::{run_tests, PolicyError, TestOutcome};

fn write(dir: &Path, name: &str, body: &str) {
    fs::write(dir.join(name), body).expect("write");
}

#[test]
fn runs_every_test_rule_and_reports_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "deny-sandbox.rego",
        "package spacelift\n\ndeny[sprintf(\"don't push to %s\", [branch])] {\n  branch := input.commit.branch\n  branch == \"sandbox\"\n}\n",
    );
    write(
        dir.path(),
        "deny-sandbox_test.rego",
        r#"package spacelift

test_sandbox_denied {
  expected := { "don't push to sandbox" }

  deny == expected with input as { "commit": { "branch": "sandbox" } }
}

test_master_not_denied {
  expected := set()

  deny == expected with input as { "commit": { "branch": "master" } }
}

test_deliberately_wrong {
  deny == {"nope"} with input as { "commit": { "branch": "sandbox" } }
}
"#,
    );
    let report = run_tests(dir.path()).expect("run");
    assert_eq!(report.results.len(), 3);
    assert_eq!(
        report.outcome_of("test_sandbox_denied"),
        Some(&TestOutcome::Pass)
    );
    assert_eq!(
        report.outcome_of("test_master_not_denied"),
        Some(&TestOutcome::Pass)
    );
    assert_eq!(
        report.outcome_of("test_deliberately_wrong"),
        Some(&TestOutcome::Fail)
    );
    assert_eq!((report.passed(), report.failed()), (2, 1));
    assert!(!report.success());
    assert!(
        report.summary().ends_with("FAIL: 2/3\n"),
        "{}",
        report.summary()
    );
}

#[test]
fn short_and_full_with_targets_both_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "network.rego",
        r#"package spacelift

network_review_required {
  input.run.flags[_] == "review:network"
}

approve { not network_review_required }
approve {
  input.reviews.current.approvals[_].session.teams[_] == "DBA"
}
"#,
    );
    write(
        dir.path(),
        "network_test.rego",
        r#"package spacelift

test_short_form_mocks_a_rule_of_the_package {
  approve with network_review_required as false
}

test_full_form_mocks_the_same_rule {
  approve with data.spacelift.network_review_required as false
}

test_short_form_blocks_without_review {
  not approve with network_review_required as true with input as {"reviews": {"current": {"approvals": []}}}
}

test_input_mock {
  approve with input as {"run": {"flags": []}}
}
"#,
    );
    let report = run_tests(dir.path()).expect("run");
    assert_eq!(report.results.len(), 4, "{report:?}");
    assert!(report.success(), "{}", report.summary());
    assert_eq!(report.summary(), "PASS: 4/4\n");
}

#[test]
fn v1_tests_and_nested_directories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sub = dir.path().join("policies");
    fs::create_dir(&sub).expect("mkdir");
    write(
        &sub,
        "plan.rego",
        "package spacelift\n\ndeny contains \"no\" if { input.x == 1 }\n",
    );
    write(
        &sub,
        "plan_test.rego",
        "package spacelift\n\ntest_denies if { deny == {\"no\"} with input as {\"x\": 1} }\ntest_mocked if { count(deny) == 2 with deny as {\"a\", \"b\"} }\n",
    );
    let report = run_tests(dir.path()).expect("run");
    assert!(report.success(), "{}", report.summary());
    assert_eq!(report.results.len(), 2);
}

#[test]
fn evaluation_errors_are_reported_per_test() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "p.rego",
        "package spacelift\n\nv := 1 { input.a }\nv := 2 { input.b }\n",
    );
    write(
        dir.path(),
        "p_test.rego",
        "package spacelift\n\ntest_conflict { v == 1 with input as {\"a\": true, \"b\": true} }\ntest_ok { v == 1 with input as {\"a\": true} }\n",
    );
    let report = run_tests(dir.path()).expect("run");
    assert!(matches!(
        report.outcome_of("test_conflict"),
        Some(TestOutcome::Error { .. })
    ));
    assert_eq!(report.outcome_of("test_ok"), Some(&TestOutcome::Pass));
}

#[test]
fn compile_errors_name_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "broken.rego", "package spacelift\n\ntrack {\n");
    match run_tests(dir.path()) {
        Err(PolicyError::Compile { message, .. }) => assert!(message.contains("broken.rego")),
        other => panic!("unexpected {other:?}"),
    }
}
