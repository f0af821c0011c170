//! `cairn policy test` runs Rego unit tests locally, like `opa test`, with the real binary.

use std::path::Path;
use std::process::Command;

const POLICY: &str = r#"package spacelift

trigger[stack.id] {
  stack := input.stacks[_]
  input.run.state == "FINISHED"
  stack.labels[_] == concat("", ["depends-on:", input.stack.id])
}
"#;

// The short `with trigger as …` form is what regorus alone rejects; `opa test` accepts it.
const TESTS: &str = r#"package spacelift

base := {"run": {"state": "FINISHED"}, "stack": {"id": "a"}, "stacks": [{"id": "b", "labels": ["depends-on:a"]}]}

test_triggers_dependents {
  trigger["b"] with input as base
}

test_nothing_when_failed {
  count(trigger) == 0 with input as object.union(base, {"run": {"state": "FAILED"}})
}

test_short_with_form {
  count(trigger) == 1 with trigger as {"x"}
}
"#;

fn cairn(dir: &Path, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["policy", "test"])
        .arg(dir)
        .args(extra)
        .env("NO_COLOR", "1")
        .output()
        .expect("run cairn");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn passing_tests_exit_zero_and_are_listed_with_verbose() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("trigger.rego"), POLICY).unwrap();
    std::fs::write(dir.path().join("trigger_test.rego"), TESTS).unwrap();
    let (code, out) = cairn(dir.path(), &["--verbose"]);
    assert_eq!(code, 0, "{out}");
    for name in [
        "test_triggers_dependents",
        "test_nothing_when_failed",
        "test_short_with_form",
    ] {
        assert!(
            out.contains(&format!("PASS data.spacelift.{name}")),
            "{out}"
        );
    }
    assert!(out.contains("PASS: 3/3"), "{out}");
}

#[test]
fn a_failing_test_is_named_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("trigger.rego"), POLICY).unwrap();
    std::fs::write(
        dir.path().join("trigger_test.rego"),
        format!("{TESTS}\ntest_wrong_stack {{\n  trigger[\"c\"] with input as base\n}}\n"),
    )
    .unwrap();
    let (code, out) = cairn(dir.path(), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL data.spacelift.test_wrong_stack"),
        "{out}"
    );
    assert!(
        !out.contains("PASS data.spacelift.test_triggers_dependents"),
        "{out}"
    );
    assert!(out.contains("FAIL: 3/4"), "{out}");
}

#[test]
fn an_empty_directory_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = cairn(dir.path(), &[]);
    assert_eq!(code, 7, "{out}");
    assert!(out.contains("no test_* rules"), "{out}");
}
