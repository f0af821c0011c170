//! The plan/output parsers against real `show -json` documents: Terraform 1.0.3 (format 0.2)
//! and 1.11.4 (format 1.2) generated with the cairntest provider, and an OpenTofu 1.8 document
//! with what only OpenTofu emits (`forget`) plus data reads, deposed objects and modules.

use cairn_proto::v1::{ChangeAction, ChangePhase, Delta};
use cairn_runner_sdk::Redactor;
use cairn_runner_tf::parse::{parse_outputs, parse_plan, render_ui_line};
use serde_json::Value;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn summary(plan: &cairn_runner_tf::parse::ParsedPlan) -> Vec<(String, ChangeAction)> {
    let mut v: Vec<_> = plan
        .changes
        .iter()
        .map(|c| (c.entity.as_ref().unwrap().address.clone(), c.action()))
        .collect();
    v.sort();
    v
}

fn check_terraform_fixture(name: &str) {
    let plan = parse_plan(
        &fixture(name),
        "terraform",
        ChangePhase::Plan,
        &Redactor::default(),
    )
    .unwrap();
    assert_eq!(
        plan.delta,
        Delta {
            added_resources: 1,
            changed_resources: 3, // upd, secret (update) + repl (replace)
            deleted_resources: 1,
            added_outputs: 1,
            changed_outputs: 2, // changed, password
            deleted_outputs: 1,
        }
    );
    assert!(!plan.no_op);
    use ChangeAction::*;
    assert_eq!(
        summary(&plan),
        vec![
            ("cairntest_file.gone".to_owned(), Deleted),
            ("cairntest_file.new[0]".to_owned(), Added),
            ("cairntest_file.repl".to_owned(), Changed),
            ("cairntest_file.secret".to_owned(), Changed),
            ("cairntest_file.upd".to_owned(), Changed),
            ("output.added".to_owned(), Added),
            ("output.changed".to_owned(), Changed),
            ("output.password".to_owned(), Changed),
            ("output.removed".to_owned(), Deleted),
        ]
    );
    for change in &plan.changes {
        let e = change.entity.as_ref().unwrap();
        assert_eq!(change.phase(), ChangePhase::Plan);
        assert_eq!(e.entity_vendor, "terraform");
        let data: Value = serde_json::from_str(&e.data_json).unwrap();
        if e.entity_type == "output" {
            assert_eq!(e.r#type, "output");
        } else {
            assert_eq!(e.entity_type, "resource");
            assert_eq!(e.r#type, "cairntest_file");
            assert_eq!(data["mode"], "managed");
        }
    }
    let secret = plan
        .changes
        .iter()
        .find(|c| c.entity.as_ref().unwrap().name == "secret")
        .unwrap();
    let data: Value = serde_json::from_str(&secret.entity.as_ref().unwrap().data_json).unwrap();
    assert_eq!(data["before"]["content"], "***");
    assert_eq!(data["after"]["content"], "***");
    assert_eq!(data["after"]["path"], "./out/secret.txt");

    // The sensitive variable appears in variables, configuration, planned values, prior state,
    // resource changes and output changes: none of it may survive.
    assert!(
        !plan.plan_json.contains("tok-0001-secret"),
        "{}",
        plan.plan_json
    );
    assert!(
        !plan.plan_json.contains("tok-0002-secret"),
        "{}",
        plan.plan_json
    );
    let doc: Value = serde_json::from_str(&plan.plan_json).unwrap();
    assert_eq!(doc["output_changes"]["password"]["after"], "***");
    assert_eq!(doc["output_changes"]["changed"]["after"], "c2");
    assert_eq!(doc["variables"]["token"]["value"], "***");
}

#[test]
fn terraform_1_0_format_0_2() {
    check_terraform_fixture("terraform-1.0.3-show.json");
}

#[test]
fn terraform_1_11_format_1_2() {
    check_terraform_fixture("terraform-1.11.4-show.json");
}

#[test]
fn opentofu_document_with_forget_read_deposed_and_modules() {
    let secrets = Redactor::new(["eu-west-1"]);
    let plan = parse_plan(
        &fixture("opentofu-1.8-show.json"),
        "opentofu",
        ChangePhase::Apply,
        &secrets,
    )
    .unwrap();
    assert_eq!(
        plan.delta,
        Delta {
            added_resources: 0,
            changed_resources: 2, // cfg update + module route replace (create_before_destroy)
            deleted_resources: 1, // deposed object
            added_outputs: 1,
            changed_outputs: 1,
            deleted_outputs: 1,
        }
    );
    use ChangeAction::*;
    assert_eq!(
        summary(&plan),
        vec![
            ("cairntest_file.cfg".to_owned(), Changed),
            ("cairntest_file.legacy".to_owned(), Deleted),
            ("module.net.cairntest_file.route[\"a\"]".to_owned(), Changed),
            ("output.conn".to_owned(), Changed),
            ("output.endpoint".to_owned(), Added),
            ("output.legacy_url".to_owned(), Deleted),
        ],
        "forget, read and no-op are not changes"
    );
    assert!(plan.changes.iter().all(|c| c.phase() == ChangePhase::Apply));
    assert!(plan
        .changes
        .iter()
        .all(|c| c.entity.as_ref().unwrap().entity_vendor == "opentofu"));
    for leaked in ["hunter2-db-pass", "old-hunter1", "eu-west-1"] {
        assert!(
            !plan.plan_json.contains(leaked),
            "{leaked} leaked: {}",
            plan.plan_json
        );
        for c in &plan.changes {
            assert!(!c.entity.as_ref().unwrap().data_json.contains(leaked));
        }
    }
    let doc: Value = serde_json::from_str(&plan.plan_json).unwrap();
    assert_eq!(
        doc["planned_values"]["outputs"]["endpoint"]["value"],
        "db.internal"
    );
    assert_eq!(doc["planned_values"]["outputs"]["conn"]["value"], "***");
    assert_eq!(
        doc["resource_drift"][0]["change"]["before"]["content"],
        "***"
    );
    let legacy = plan
        .changes
        .iter()
        .find(|c| c.entity.as_ref().unwrap().name == "legacy")
        .unwrap();
    let data: Value = serde_json::from_str(&legacy.entity.as_ref().unwrap().data_json).unwrap();
    assert_eq!(data["deposed"], "5a4c1b2e");
}

#[test]
fn empty_plan_is_a_no_op_and_unknown_format_is_refused() {
    let empty = r#"{"format_version":"1.2","terraform_version":"1.9.0","planned_values":{"root_module":{}},
        "resource_changes":[{"address":"a.b","mode":"managed","type":"a","name":"b","change":{"actions":["no-op"],
        "before":{},"after":{},"before_sensitive":{},"after_sensitive":{}}}],
        "output_changes":{"x":{"actions":["no-op"],"before":"1","after":"1"}}}"#;
    let plan = parse_plan(empty, "terraform", ChangePhase::Plan, &Redactor::default()).unwrap();
    assert!(plan.no_op);
    assert!(plan.changes.is_empty());
    assert_eq!(plan.delta, Delta::default());

    let err = parse_plan(
        r#"{"format_version":"2.0"}"#,
        "terraform",
        ChangePhase::Plan,
        &Redactor::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("2.0"), "{err}");
    assert!(parse_plan(
        "not json",
        "terraform",
        ChangePhase::Plan,
        &Redactor::default()
    )
    .is_err());
}

#[test]
fn outputs_are_flattened_and_sensitive_ones_masked() {
    let out = parse_outputs(
        &fixture("terraform-1.0.3-output.json"),
        &Redactor::default(),
    )
    .unwrap();
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        doc,
        serde_json::json!({"added": "a", "changed": "c2", "kept": "k", "password": "***"})
    );
}

#[test]
fn ui_messages_render_readably() {
    let lines: Vec<_> = fixture("terraform-1.0.3-plan.jsonl")
        .lines()
        .filter_map(|l| render_ui_line(l).text)
        .collect();
    assert!(
        lines.contains(&"cairntest_file.gone: Plan to delete".to_owned()),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l == "Plan: 2 to add, 2 to change, 2 to destroy."),
        "{lines:?}"
    );

    let diag = r#"{"@level":"error","@message":"Error: Saved plan is stale","type":"diagnostic","diagnostic":{"severity":"error","summary":"Saved plan is stale","detail":"The given plan file can no longer be applied."}}"#;
    let ui = render_ui_line(diag);
    assert_eq!(
        ui.error.as_deref(),
        Some("Saved plan is stale: The given plan file can no longer be applied.")
    );
    assert_eq!(
        ui.text.as_deref(),
        Some("Error: Saved plan is stale: The given plan file can no longer be applied.")
    );
    assert_eq!(
        render_ui_line("plain text").text.as_deref(),
        Some("plain text")
    );
}

/// The fallback description of a plan being applied: what `plan -json` printed while planning
/// says the same about resources as `show -json` of that plan (1.0.3 fixtures of one plan).
#[test]
fn the_plans_own_output_describes_its_resources_like_show() {
    let mut streamed = cairn_runner_tf::parse::StreamedPlan::default();
    for line in fixture("terraform-1.0.3-plan.jsonl").lines() {
        streamed.observe(&serde_json::from_str(line).unwrap(), "terraform");
    }
    let streamed = streamed.into_parsed();
    let shown = parse_plan(
        &fixture("terraform-1.0.3-show.json"),
        "terraform",
        ChangePhase::Plan,
        &Redactor::default(),
    )
    .unwrap();
    let resources = |plan: &cairn_runner_tf::parse::ParsedPlan| -> Vec<_> {
        summary(plan)
            .into_iter()
            .filter(|(address, _)| !address.starts_with("output."))
            .collect()
    };
    assert_eq!(resources(&streamed), resources(&shown));
    assert_eq!(
        streamed.delta,
        Delta {
            added_outputs: 0,
            changed_outputs: 0,
            deleted_outputs: 0,
            ..shown.delta
        }
    );
    assert!(!streamed.no_op, "the plan's exit code said it has changes");
    assert!(streamed.plan_json.is_empty());
    let new = streamed
        .changes
        .iter()
        .filter_map(|c| c.entity.as_ref())
        .find(|e| e.address == "cairntest_file.new[0]")
        .unwrap();
    assert_eq!(
        (new.name.as_str(), new.r#type.as_str()),
        ("new", "cairntest_file")
    );
}
