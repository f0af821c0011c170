//! Launches the real plugin binaries through the SDK's host side and drives them against the
//! real Terraform from the shared tool layout (`$CAIRN_TOOLS_DIR`, default
//! `<workspace>/target/tools`) with the cairntest provider from its filesystem mirror.
//! The OpenTofu plugin runs the same Terraform binary through `CAIRN_TOFU_BIN`: the CLI and
//! formats are the same, and no `tofu` build can be installed here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_proto::runner::v1::{
    apply_response, plan_response, ApplyRequest, ApplyResult, DescribeRequest, PlanRequest,
    PlanResult, Workspace,
};
use cairn_proto::v1::{ChangeAction, ChangePhase, Delta, LogLine};
use cairn_runner_sdk::{launch, LaunchOptions, PluginHandle};
use serde_json::Value;
use tokio_stream::StreamExt;

const TOKEN: &str = "tok-super-secret-42";

fn tools_dir() -> PathBuf {
    std::env::var_os("CAIRN_TOOLS_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools"),
        PathBuf::from,
    )
}

/// The tools must be there: a missing tool is a broken test environment, not a skip.
fn required(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask provision` (or set CAIRN_TOOLS_DIR)",
        path.display()
    );
    path
}

async fn start(plugin: &str, bin_env: &str) -> PluginHandle {
    let tools = tools_dir();
    let terraform = required(tools.join("bin/terraform"));
    let rc = required(tools.join("terraformrc"));
    let options = LaunchOptions {
        env: vec![
            (bin_env.into(), terraform.into()),
            ("TF_CLI_CONFIG_FILE".into(), rc.into()),
            // Nothing in these tests may reach the network.
            ("CHECKPOINT_DISABLE".into(), "1".into()),
        ],
        ..LaunchOptions::default()
    };
    launch(Path::new(plugin), options)
        .await
        .expect("plugin launches")
}

struct Project {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Project {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_owned();
        std::fs::create_dir_all(root.join("infra")).unwrap();
        Self { _tmp: tmp, root }
    }

    fn dir(&self) -> PathBuf {
        self.root.join("infra")
    }

    fn write(&self, body: &str) {
        let header = r#"
terraform {
  required_providers {
    cairntest = { source = "cairn.local/test/cairntest" }
  }
}
variable "token" {
  type      = string
  sensitive = true
  default   = "unset"
}
"#;
        std::fs::write(self.dir().join("main.tf"), format!("{header}\n{body}")).unwrap();
    }

    fn workspace(&self) -> Workspace {
        Workspace {
            root_dir: self.root.display().to_string(),
            project_root: "infra".into(),
            env: [("CAIRN_TEST_ENV".to_owned(), "1".to_owned())].into(),
            secret_values: vec![TOKEN.to_owned()],
            variables: [("token".to_owned(), TOKEN.to_owned())].into(),
            run_id: "run-1".into(),
            stack_id: "stack-1".into(),
        }
    }

    fn read(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.dir().join("out").join(name)).ok()
    }
}

async fn plan(
    h: &PluginHandle,
    p: &Project,
    targets: &[&str],
    destroy: bool,
    skip: bool,
) -> (PlanResult, Vec<LogLine>) {
    let mut stream = h
        .client
        .clone()
        .plan(PlanRequest {
            workspace: Some(p.workspace()),
            targets: targets.iter().map(|t| t.to_string()).collect(),
            destroy,
            skip_planning: skip,
        })
        .await
        .unwrap()
        .into_inner();
    let (mut logs, mut result, mut saved) = (Vec::new(), None, 0);
    while let Some(msg) = stream.next().await {
        match msg.unwrap().event.unwrap() {
            plan_response::Event::Log(l) => logs.push(l),
            plan_response::Event::Result(r) => result = Some(r),
            plan_response::Event::Saved(_) => {
                assert!(result.is_none(), "PlanSaved comes before the result");
                saved += 1;
            }
            plan_response::Event::Phase(_) => {}
        }
    }
    check_no_secret(&logs);
    let result = result.expect("plan stream ends with a result");
    assert_eq!(
        saved,
        usize::from(result.success && !result.skipped && !result.no_op),
        "PlanSaved once exactly when a saved plan has changes: {result:?}"
    );
    (result, logs)
}

async fn apply(h: &PluginHandle, p: &Project) -> (ApplyResult, Vec<LogLine>) {
    apply_in(h.client.clone(), p.workspace()).await
}

/// [`apply`] with what it needs owned, to run in a task of its own.
async fn apply_in(
    mut client: cairn_proto::runner::v1::runner_service_client::RunnerServiceClient<
        tonic::transport::Channel,
    >,
    workspace: Workspace,
) -> (ApplyResult, Vec<LogLine>) {
    let mut stream = client
        .apply(ApplyRequest {
            workspace: Some(workspace),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (mut logs, mut result) = (Vec::new(), None);
    while let Some(msg) = stream.next().await {
        match msg.unwrap().event.unwrap() {
            apply_response::Event::Log(l) => logs.push(l),
            apply_response::Event::Result(r) => result = Some(r),
            apply_response::Event::Phase(_) => {}
        }
    }
    check_no_secret(&logs);
    (result.expect("apply stream ends with a result"), logs)
}

fn check_no_secret(logs: &[LogLine]) {
    for l in logs {
        assert!(
            !l.message.contains(TOKEN),
            "secret leaked in log: {}",
            l.message
        );
    }
}

fn actions(changes: &[cairn_proto::v1::Change]) -> Vec<(String, ChangeAction)> {
    let mut v: Vec<_> = changes
        .iter()
        .map(|c| (c.entity.as_ref().unwrap().address.clone(), c.action()))
        .collect();
    v.sort();
    v
}

fn ok_plan(r: &PlanResult) {
    assert!(r.success, "plan failed: {}", r.error);
}

fn ok_apply(r: &ApplyResult) {
    assert!(r.success, "apply failed: {}", r.error);
}

const V1: &str = r#"
resource "cairntest_file" "a" {
  path    = "${path.module}/out/a.txt"
  content = "a1"
}
resource "cairntest_file" "b" {
  path    = "${path.module}/out/b1.txt"
  content = "b"
}
output "a_path" { value = cairntest_file.a.id }
"#;

const V2: &str = r#"
resource "cairntest_file" "a" {
  path    = "${path.module}/out/a.txt"
  content = "a2"
}
resource "cairntest_file" "b" {
  path    = "${path.module}/out/b2.txt"
  content = "b"
}
resource "cairntest_file" "c" {
  path    = "${path.module}/out/c.txt"
  content = var.token
}
output "token" {
  value     = var.token
  sensitive = true
}
"#;

const V3: &str = r#"
resource "cairntest_file" "a" {
  path    = "${path.module}/out/a.txt"
  content = "a3"
}
resource "cairntest_file" "b" {
  path    = "${path.module}/out/b2.txt"
  content = "b3"
}
resource "cairntest_file" "c" {
  path    = "${path.module}/out/c.txt"
  content = var.token
}
output "token" {
  value     = var.token
  sensitive = true
}
"#;

async fn lifecycle(plugin: &str, bin_env: &str, vendor: &str) {
    use ChangeAction::*;
    let h = start(plugin, bin_env).await;
    let described = h
        .client
        .clone()
        .describe(DescribeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(described.vendor, vendor);
    assert!(!described.vendor_version.is_empty(), "vendor version found");
    let caps = described.capabilities.unwrap();
    assert!(caps.targets && caps.destroy && caps.skip_planning);

    let p = Project::new();

    // Create.
    p.write(V1);
    let (r, logs) = plan(&h, &p, &[], false, false).await;
    ok_plan(&r);
    assert!(!r.no_op);
    assert_eq!(
        r.delta.unwrap(),
        Delta {
            added_resources: 2,
            added_outputs: 1,
            ..Default::default()
        }
    );
    assert_eq!(
        actions(&r.changes),
        [
            ("cairntest_file.a".into(), Added),
            ("cairntest_file.b".into(), Added),
            ("output.a_path".into(), Added)
        ]
    );
    assert!(r
        .changes
        .iter()
        .all(|c| c.phase() == ChangePhase::Plan
            && c.entity.as_ref().unwrap().entity_vendor == vendor));
    assert!(
        logs.iter()
            .any(|l| l.message == "cairntest_file.a: Plan to create"),
        "readable UI lines"
    );
    let (r, _) = apply(&h, &p).await;
    ok_apply(&r);
    assert!(r.changes.iter().all(|c| c.phase() == ChangePhase::Apply));
    assert_eq!(r.delta.unwrap().added_resources, 2);
    assert_eq!(p.read("a.txt").as_deref(), Some("a1"));
    assert_eq!(p.read("b1.txt").as_deref(), Some("b"));
    let outputs: Value = serde_json::from_str(&r.outputs_json).unwrap();
    assert_eq!(outputs["a_path"], "./out/a.txt");

    // Nothing changed: no-op.
    let (r, _) = plan(&h, &p, &[], false, false).await;
    ok_plan(&r);
    assert!(r.no_op);
    assert!(r.changes.is_empty());
    assert_eq!(r.delta.unwrap(), Delta::default());

    // Update in place, replace, create with a secret, delete and add outputs.
    p.write(V2);
    let (r, _) = plan(&h, &p, &[], false, false).await;
    ok_plan(&r);
    assert_eq!(
        r.delta.unwrap(),
        Delta {
            added_resources: 1,
            changed_resources: 2,
            added_outputs: 1,
            deleted_outputs: 1,
            ..Default::default()
        }
    );
    assert_eq!(
        actions(&r.changes),
        [
            ("cairntest_file.a".into(), Changed),
            ("cairntest_file.b".into(), Changed),
            ("cairntest_file.c".into(), Added),
            ("output.a_path".into(), Deleted),
            ("output.token".into(), Added),
        ]
    );
    assert!(!r.plan_json.contains(TOKEN), "secret in plan_json");
    assert!(r
        .changes
        .iter()
        .all(|c| !c.entity.as_ref().unwrap().data_json.contains(TOKEN)));
    let (r, _) = apply(&h, &p).await;
    ok_apply(&r);
    assert_eq!(p.read("a.txt").as_deref(), Some("a2"));
    assert_eq!(p.read("b1.txt"), None, "replaced file removed");
    assert_eq!(p.read("b2.txt").as_deref(), Some("b"));
    assert_eq!(
        p.read("c.txt").as_deref(),
        Some(TOKEN),
        "TF_VAR_ variables reach terraform"
    );
    let outputs: Value = serde_json::from_str(&r.outputs_json).unwrap();
    assert_eq!(outputs, serde_json::json!({"token": "***"}));

    // Targeted plan: only `a`, although `b` changes too. Kept aside to go stale.
    p.write(V3);
    let (r, _) = plan(&h, &p, &["cairntest_file.a"], false, false).await;
    ok_plan(&r);
    assert_eq!(actions(&r.changes), [("cairntest_file.a".into(), Changed)]);
    assert_eq!(
        r.delta.unwrap(),
        Delta {
            changed_resources: 1,
            ..Default::default()
        }
    );
    let plan_file = p.dir().join(cairn_runner_tf::PLAN_FILE);
    let targeted = std::fs::read(&plan_file).unwrap();

    // Skipped planning, then apply: the plugin plans and applies everything.
    let (r, _) = plan(&h, &p, &[], false, true).await;
    ok_plan(&r);
    assert!(r.skipped);
    let (r, _) = apply(&h, &p).await;
    ok_apply(&r);
    assert_eq!(r.delta.unwrap().changed_resources, 2);
    assert_eq!(p.read("b2.txt").as_deref(), Some("b3"));

    // The targeted plan was made against the state before that apply: stale.
    std::fs::write(&plan_file, targeted).unwrap();
    let (r, _) = apply(&h, &p).await;
    assert!(!r.success, "a stale plan must not apply");
    assert!(
        r.error.to_lowercase().contains("stale"),
        "terraform's message: {}",
        r.error
    );

    // Destroy.
    let (r, _) = plan(&h, &p, &[], true, false).await;
    ok_plan(&r);
    assert_eq!(
        r.delta.unwrap(),
        Delta {
            deleted_resources: 3,
            deleted_outputs: 1,
            ..Default::default()
        }
    );
    let (r, _) = apply(&h, &p).await;
    ok_apply(&r);
    assert_eq!(p.read("a.txt"), None);
    assert_eq!(p.read("c.txt"), None);

    // A broken configuration fails the plan with terraform's diagnostic.
    p.write("resource \"cairntest_file\" \"x\" {\n  path = 1\n  nope = true\n}\n");
    let (r, _) = plan(&h, &p, &[], false, false).await;
    assert!(!r.success);
    assert!(r.error.contains("nope"), "{}", r.error);

    h.shutdown(Duration::from_secs(30)).await.unwrap();
}

/// What an agent does for an autodeploy run: Apply as soon as the plan is saved, while the
/// Plan call still reads the plan's details with `show`.
#[tokio::test(flavor = "multi_thread")]
async fn apply_runs_beside_the_plans_show() {
    use ChangeAction::*;
    let h = start(
        env!("CARGO_BIN_EXE_cairn-runner-terraform"),
        "CAIRN_TERRAFORM_BIN",
    )
    .await;
    let p = Project::new();
    p.write(V1);
    let mut planning = h
        .client
        .clone()
        .plan(PlanRequest {
            workspace: Some(p.workspace()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut applying = None;
    let mut plan_result = None;
    while let Some(msg) = planning.next().await {
        match msg.unwrap().event.unwrap() {
            plan_response::Event::Saved(_) => {
                applying = Some(tokio::spawn(apply_in(h.client.clone(), p.workspace())));
            }
            plan_response::Event::Result(r) => plan_result = Some(r),
            _ => {}
        }
    }
    let planned = plan_result.expect("plan stream ends with a result");
    ok_plan(&planned);
    let (applied, _) = applying
        .expect("the plugin said the plan was saved")
        .await
        .unwrap();
    ok_apply(&applied);
    // Both describe the same plan, outputs included, each in its own phase.
    let expected = [
        ("cairntest_file.a".to_string(), Added),
        ("cairntest_file.b".to_string(), Added),
        ("output.a_path".to_string(), Added),
    ];
    assert_eq!(actions(&planned.changes), expected);
    assert_eq!(actions(&applied.changes), expected);
    assert_eq!(planned.delta, applied.delta);
    assert!(applied
        .changes
        .iter()
        .all(|c| c.phase() == ChangePhase::Apply));
    assert!(planned.plan_json.contains("resource_changes"));
    assert_eq!(p.read("a.txt").as_deref(), Some("a1"));
    let outputs: Value = serde_json::from_str(&applied.outputs_json).unwrap();
    assert_eq!(outputs["a_path"], "./out/a.txt");
    // The applied plan is current: planning again finds nothing to do.
    let (r, _) = plan(&h, &p, &[], false, false).await;
    ok_plan(&r);
    assert!(r.no_op, "{r:?}");
    h.shutdown(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn terraform_plugin_lifecycle() {
    lifecycle(
        env!("CARGO_BIN_EXE_cairn-runner-terraform"),
        "CAIRN_TERRAFORM_BIN",
        "terraform",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn opentofu_plugin_lifecycle() {
    lifecycle(
        env!("CARGO_BIN_EXE_cairn-runner-opentofu"),
        "CAIRN_TOFU_BIN",
        "opentofu",
    )
    .await;
}
