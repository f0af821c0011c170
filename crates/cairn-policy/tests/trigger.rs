//! Every trigger-policy example of Spacelift's trigger-policy page, on hand-built inputs.

use std::collections::BTreeSet;

use cairn_policy::input::{RunInfo, StackInfo, WorkflowRun};
use cairn_policy::{
    CompiledPolicy, Decision, PolicyKind, PolicyOptions, StacksDocument, TriggerDecision,
};

fn compile(body: &str) -> CompiledPolicy {
    CompiledPolicy::compile("t", 1, PolicyKind::Trigger, body, PolicyOptions::default())
        .unwrap_or_else(|e| panic!("compile: {e}"))
}

fn stack(id: &str, labels: &[&str]) -> StackInfo {
    StackInfo {
        id: id.to_string(),
        name: id.to_string(),
        branch: "main".to_string(),
        labels: labels.iter().map(|s| s.to_string()).collect(),
        ..StackInfo::default()
    }
}

fn run(state: &str, ty: &str, triggered_by: Option<&str>) -> RunInfo {
    RunInfo {
        id: "run-1".to_string(),
        state: state.to_string(),
        r#type: ty.to_string(),
        triggered_by: triggered_by.map(str::to_string),
        ..RunInfo::default()
    }
}

fn input(
    run: RunInfo,
    current: &str,
    stacks: &[StackInfo],
    workflow: Vec<WorkflowRun>,
) -> cairn_policy::input::TriggerInput {
    cairn_policy::input::TriggerInput {
        run,
        stack: stacks
            .iter()
            .find(|s| s.id == current)
            .cloned()
            .unwrap_or_else(|| stack(current, &[])),
        stacks: StacksDocument::new(stacks).expect("stacks"),
        workflow,
    }
}

fn triggered(
    policy: &CompiledPolicy,
    input: &cairn_policy::input::TriggerInput,
) -> BTreeSet<String> {
    match policy.decide(input).expect("evaluate") {
        Decision::Trigger(TriggerDecision { trigger, .. }) => trigger,
        other => panic!("unexpected {other:?}"),
    }
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

const HARDCODED: &str = r#"package spacelift

trigger["stack-one"] { finished }
trigger["stack-two"] { finished }
trigger["stack-three"] { finished }

finished {
  input.run.state == "FINISHED"
  input.run.type == "TRACKED"
}
"#;

#[test]
fn hardcoded_list() {
    let p = compile(HARDCODED);
    let stacks = [stack("parent", &[])];
    let ok = input(run("FINISHED", "TRACKED", None), "parent", &stacks, vec![]);
    assert_eq!(
        triggered(&p, &ok),
        set(&["stack-one", "stack-two", "stack-three"])
    );
    let failed = input(run("FAILED", "TRACKED", None), "parent", &stacks, vec![]);
    assert!(triggered(&p, &failed).is_empty());
    let task = input(run("FINISHED", "TASK", None), "parent", &stacks, vec![]);
    assert!(triggered(&p, &task).is_empty());
}

const DEPENDS_ON: &str = r#"package spacelift

trigger[stack.id] {
  stack := input.stacks[_]
  input.run.state == "FINISHED"
  input.run.type == "TRACKED"
  stack.labels[_] == concat("", ["depends-on:", input.stack.id])
}
"#;

#[test]
fn depends_on_labels() {
    let p = compile(DEPENDS_ON);
    let stacks = [
        stack("parent", &[]),
        stack("child-a", &["depends-on:parent"]),
        stack("child-b", &["team:x", "depends-on:parent"]),
        stack("other", &["depends-on:someone-else"]),
    ];
    let i = input(run("FINISHED", "TRACKED", None), "parent", &stacks, vec![]);
    assert_eq!(triggered(&p, &i), set(&["child-a", "child-b"]));
    let i = input(run("FAILED", "TRACKED", None), "parent", &stacks, vec![]);
    assert!(triggered(&p, &i).is_empty());
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

#[test]
fn depends_on_labels_with_state() {
    let p = compile(LABELS_WITH_STATE);
    let stacks = [
        stack("parent", &[]),
        stack("on-success", &["depends-on:parent|state:FINISHED"]),
        stack("on-failure", &["depends-on:parent|state:FAILED"]),
    ];
    let i = input(run("FINISHED", "TRACKED", None), "parent", &stacks, vec![]);
    assert_eq!(triggered(&p, &i), set(&["on-success"]));
    let i = input(run("FAILED", "TRACKED", None), "parent", &stacks, vec![]);
    assert_eq!(triggered(&p, &i), set(&["on-failure"]));
    let i = input(run("FAILED", "TASK", None), "parent", &stacks, vec![]);
    assert!(triggered(&p, &i).is_empty());
}

const RETRIES: &str = r#"package spacelift

trigger[stack.id] {
  stack := input.stack
  input.run.state == "FAILED"
  input.run.type == "TRACKED"
  is_null(input.run.triggered_by)
}
"#;

#[test]
fn automated_retries_guarded_by_triggered_by() {
    let p = compile(RETRIES);
    let stacks = [stack("flaky", &[])];
    let vcs = input(run("FAILED", "TRACKED", None), "flaky", &stacks, vec![]);
    assert_eq!(triggered(&p, &vcs), set(&["flaky"]));
    // A run the policy itself (or a human) triggered is not retried again: no loop.
    let retried = input(
        run("FAILED", "TRACKED", Some("trigger-policy")),
        "flaky",
        &stacks,
        vec![],
    );
    assert!(triggered(&p, &retried).is_empty());
    let finished = input(run("FINISHED", "TRACKED", None), "flaky", &stacks, vec![]);
    assert!(triggered(&p, &finished).is_empty());
}

const DIAMOND_ROOT: &str = r#"package spacelift

trigger["stack-2a"] {
  tracked_and_finished
}

trigger["stack-2b"] {
  tracked_and_finished
}

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

const DIAMOND_LABELS: &str = r#"package spacelift

# Helper with stack_id's of workflow runs which have already finished.
already_finished[run.stack_id] {
  run := input.workflow[_]
  run.state == "FINISHED"
}

trigger[stack.id] {
  input.run.state == "FINISHED"
  input.run.type == "TRACKED"

  # For each Stack which has a depends-on label,
  # get a list of its dependencies.
  stack := input.stacks[_]
  label := stack.labels[_]
  startswith(label, "depends-on:")
  dependencies := split(trim_prefix(label, "depends-on:"), ",")

  # The current Stack is one of the dependencies.
  input.stack.id == dependencies[_]

  finished_dependencies := [dependency |
    dependency := dependencies[_]
    already_finished[dependency]]

  # Check if all dependencies have finished.
  count(finished_dependencies) == count(dependencies)
}
"#;

fn wf(stack_id: &str, state: &str) -> WorkflowRun {
    WorkflowRun {
        id: format!("run-{stack_id}"),
        stack_id: stack_id.to_string(),
        state: state.to_string(),
        r#type: "TRACKED".to_string(),
    }
}

#[test]
fn diamond_with_workflow() {
    let root = compile(DIAMOND_ROOT);
    let stacks = [
        stack("stack-1", &[]),
        stack("stack-2a", &[]),
        stack("stack-2b", &[]),
        stack("stack-3", &[]),
    ];
    let i = input(run("FINISHED", "TRACKED", None), "stack-1", &stacks, vec![]);
    assert_eq!(triggered(&root, &i), set(&["stack-2a", "stack-2b"]));

    let middle = compile(DIAMOND_MIDDLE);
    // 2a finished while 2b still runs: nothing yet.
    let half = input(
        run("FINISHED", "TRACKED", None),
        "stack-2a",
        &stacks,
        vec![
            wf("stack-1", "FINISHED"),
            wf("stack-2a", "FINISHED"),
            wf("stack-2b", "APPLYING"),
        ],
    );
    assert!(triggered(&middle, &half).is_empty());
    let both = input(
        run("FINISHED", "TRACKED", None),
        "stack-2b",
        &stacks,
        vec![
            wf("stack-1", "FINISHED"),
            wf("stack-2a", "FINISHED"),
            wf("stack-2b", "FINISHED"),
        ],
    );
    assert_eq!(triggered(&middle, &both), set(&["stack-3"]));
}

#[test]
fn diamond_with_depends_on_list_label() {
    let p = compile(DIAMOND_LABELS);
    let stacks = [
        stack("stack-2a", &["depends-on:stack-1"]),
        stack("stack-2b", &["depends-on:stack-1"]),
        stack("stack-3", &["depends-on:stack-2a,stack-2b"]),
    ];
    let half = input(
        run("FINISHED", "TRACKED", None),
        "stack-2a",
        &stacks,
        vec![wf("stack-2a", "FINISHED"), wf("stack-2b", "PLANNING")],
    );
    assert!(triggered(&p, &half).is_empty());
    let both = input(
        run("FINISHED", "TRACKED", None),
        "stack-2b",
        &stacks,
        vec![wf("stack-2a", "FINISHED"), wf("stack-2b", "FINISHED")],
    );
    assert_eq!(triggered(&p, &both), set(&["stack-3"]));
    // The workflow holds the finished run itself, so stack-1 counts as finished.
    let root = input(
        run("FINISHED", "TRACKED", None),
        "stack-1",
        &stacks,
        vec![wf("stack-1", "FINISHED")],
    );
    assert_eq!(triggered(&p, &root), set(&["stack-2a", "stack-2b"]));
}

#[test]
fn module_style_trigger_everything() {
    let p = compile("package spacelift\n\ntrigger[stack.id] { stack := input.stacks[_] }\n");
    let stacks = [stack("a", &[]), stack("b", &[])];
    let i = input(run("FINISHED", "TRACKED", None), "a", &stacks, vec![]);
    assert_eq!(triggered(&p, &i), set(&["a", "b"]));
}

#[test]
fn several_trigger_policies_union() {
    let a = compile(HARDCODED);
    let b = compile(DEPENDS_ON);
    let stacks = [stack("parent", &[]), stack("child", &["depends-on:parent"])];
    let i = input(run("FINISHED", "TRACKED", None), "parent", &stacks, vec![]);
    let combined = TriggerDecision::combine([a, b].iter().map(|p| match p.decide(&i) {
        Ok(Decision::Trigger(d)) => d,
        other => panic!("unexpected {other:?}"),
    }));
    assert_eq!(
        combined.trigger,
        set(&["stack-one", "stack-two", "stack-three", "child"])
    );
}

#[test]
fn flags_from_a_trigger_policy() {
    let p = compile("package spacelift\n\nflag[\"seen-by-trigger\"] { true }\ntrigger[\"x\"] { input.run.state == \"FINISHED\" }\n");
    let stacks = [stack("a", &[])];
    let i = input(run("FINISHED", "TRACKED", None), "a", &stacks, vec![]);
    let d = p.decide(&i).expect("decide");
    assert_eq!(d.flags(), &set(&["seen-by-trigger"]));
}

/// The Rego input is built by hand (a compact object, `stacks` parsed from text once) rather than
/// converted from JSON; it must still be exactly the document a policy sample stores.
#[test]
fn rego_input_is_the_json_document() {
    use cairn_policy::PolicyInput;

    let mut deploy = stack("deploy", &["depends-on:network", "team:ops"]);
    deploy.project_root = Some("stacks/deploy".to_string());
    let stacks = [stack("network", &[]), deploy];
    let workflow = vec![WorkflowRun {
        id: "run-0".to_string(),
        stack_id: "network".to_string(),
        state: "FINISHED".to_string(),
        r#type: "TRACKED".to_string(),
    }];
    let input = input(
        run("FINISHED", "TRACKED", Some("user")),
        "network",
        &stacks,
        workflow,
    );
    let rego = input.to_rego().expect("rego");
    let json = input.to_json().expect("json");
    assert_eq!(rego, regorus::Value::from(json.clone()));
    assert_eq!(
        rego["stacks"][1]["labels"][0],
        regorus::Value::from("depends-on:network")
    );
    assert_eq!(json["workflow"][0]["stack_id"], "network");
}
