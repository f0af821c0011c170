//! Launches the real plugin through the SDK host side against the fake `pulumi`
//! (tests/fixtures/pulumi/pulumi), which prints the documented PreviewDigest and engine events.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_proto::runner::v1::{
    apply_response, plan_response, ApplyRequest, ApplyResult, DescribeRequest, PlanRequest,
    PlanResult, Workspace,
};
use cairn_proto::v1::{ChangeAction, ChangePhase, Delta};
use cairn_runner_sdk::{launch, LaunchOptions, PluginHandle};
use serde_json::{json, Value};
use tokio_stream::StreamExt;

const SECRET_KEY: &str = "bucket-key-s3cr3t";

fn fake_pulumi() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/pulumi/pulumi");
    assert!(path.exists(), "fake pulumi missing at {}", path.display());
    path
}

async fn start() -> PluginHandle {
    let options = LaunchOptions {
        env: vec![("CAIRN_PULUMI_BIN".into(), fake_pulumi().into())],
        ..LaunchOptions::default()
    };
    launch(
        Path::new(env!("CARGO_BIN_EXE_cairn-runner-pulumi")),
        options,
    )
    .await
    .expect("plugin launches")
}

struct Project {
    tmp: tempfile::TempDir,
}

impl Project {
    fn write(&self, program: &Value) {
        std::fs::write(self.tmp.path().join("program.json"), program.to_string()).unwrap();
    }

    fn workspace(&self) -> Workspace {
        Workspace {
            root_dir: self.tmp.path().display().to_string(),
            secret_values: vec![SECRET_KEY.to_owned()],
            env: [("CAIRN_PULUMI_STACK".to_owned(), "prod".to_owned())].into(),
            ..Default::default()
        }
    }
}

async fn plan(h: &PluginHandle, p: &Project, targets: &[&str], skip: bool) -> PlanResult {
    let mut stream = h
        .client
        .clone()
        .plan(PlanRequest {
            workspace: Some(p.workspace()),
            targets: targets.iter().map(|t| t.to_string()).collect(),
            skip_planning: skip,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut result = None;
    while let Some(msg) = stream.next().await {
        match msg.unwrap().event.unwrap() {
            plan_response::Event::Log(l) => {
                assert!(!l.message.contains(SECRET_KEY), "{}", l.message)
            }
            plan_response::Event::Result(r) => result = Some(r),
            plan_response::Event::Phase(_) => {}
            // Its apply plans again; there is no saved plan that could be applied early.
            plan_response::Event::Saved(_) => panic!("the pulumi plugin announced a saved plan"),
        }
    }
    result.expect("plan ends with a result")
}

async fn apply(h: &PluginHandle, p: &Project) -> ApplyResult {
    let mut stream = h
        .client
        .clone()
        .apply(ApplyRequest {
            workspace: Some(p.workspace()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut result = None;
    while let Some(msg) = stream.next().await {
        match msg.unwrap().event.unwrap() {
            apply_response::Event::Log(l) => {
                assert!(!l.message.contains(SECRET_KEY), "{}", l.message)
            }
            apply_response::Event::Result(r) => result = Some(r),
            apply_response::Event::Phase(_) => {}
        }
    }
    result.expect("apply ends with a result")
}

fn actions(changes: &[cairn_proto::v1::Change]) -> Vec<(String, ChangeAction)> {
    let mut v: Vec<_> = changes
        .iter()
        .map(|c| (c.entity.as_ref().unwrap().name.clone(), c.action()))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn preview_up_targets_and_secrets() {
    use ChangeAction::*;
    let h = start().await;
    let d = h
        .client
        .clone()
        .describe(DescribeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (d.vendor.as_str(), d.vendor_version.as_str()),
        ("pulumi", "3.140.0")
    );

    let p = Project {
        tmp: tempfile::tempdir().unwrap(),
    };
    let bucket = |name: &str, key: &str| json!({"type": "fake:index:Bucket", "inputs": {"name": name, "key": key}, "secret": ["key"]});
    p.write(&json!({
        "resources": {"logs": bucket("logs-1", SECRET_KEY)},
        "outputs": {"url": "http://logs", "password": {"secret": "pw-hidden-1"}},
    }));
    let r = plan(&h, &p, &[], false).await;
    assert!(r.success, "{}", r.error);
    assert_eq!(
        r.delta.unwrap(),
        Delta {
            added_resources: 1,
            added_outputs: 2,
            ..Default::default()
        }
    );
    assert_eq!(
        actions(&r.changes),
        [
            ("logs".into(), Added),
            ("password".into(), Added),
            ("url".into(), Added)
        ]
    );
    let logs = r
        .changes
        .iter()
        .find(|c| c.entity.as_ref().unwrap().name == "logs")
        .unwrap();
    let e = logs.entity.as_ref().unwrap();
    assert_eq!(e.address, "urn:pulumi:prod::proj::fake:index:Bucket::logs");
    assert_eq!(e.r#type, "fake:index:Bucket");
    assert_eq!(logs.phase(), ChangePhase::Plan);
    for leaked in [SECRET_KEY, "pw-hidden-1"] {
        assert!(!r.plan_json.contains(leaked), "{leaked} in plan_json");
        assert!(r
            .changes
            .iter()
            .all(|c| !c.entity.as_ref().unwrap().data_json.contains(leaked)));
    }

    let r = apply(&h, &p).await;
    assert!(r.success, "{}", r.error);
    assert_eq!(r.delta.unwrap().added_resources, 1);
    assert!(r.changes.iter().all(|c| c.phase() == ChangePhase::Apply));
    let outputs: Value = serde_json::from_str(&r.outputs_json).unwrap();
    assert_eq!(outputs, json!({"url": "http://logs", "password": "***"}));

    let r = plan(&h, &p, &[], false).await;
    assert!(r.success && r.no_op, "{:?}", actions(&r.changes));

    // Update, replace and create; then only the targeted one.
    p.write(&json!({
        "resources": {"logs": bucket("logs-2", SECRET_KEY), "data": bucket("data", "k2")},
        "outputs": {"url": "http://logs2", "password": {"secret": "pw-hidden-1"}},
    }));
    let r = plan(&h, &p, &[], false).await;
    assert_eq!(
        actions(&r.changes),
        [
            ("data".into(), Added),
            ("logs".into(), Changed),
            ("url".into(), Changed)
        ]
    );
    assert_eq!(
        r.delta.unwrap(),
        Delta {
            added_resources: 1,
            changed_resources: 1,
            changed_outputs: 1,
            ..Default::default()
        }
    );
    let r = plan(
        &h,
        &p,
        &["urn:pulumi:prod::proj::fake:index:Bucket::data"],
        false,
    )
    .await;
    assert_eq!(
        actions(&r.changes),
        [("data".into(), Added), ("url".into(), Changed)]
    );

    // Skipped preview: apply goes straight to the update (--skip-preview).
    let r = plan(&h, &p, &[], true).await;
    assert!(r.success && r.skipped);
    let r = apply(&h, &p).await;
    assert!(r.success, "{}", r.error);
    assert_eq!(
        actions(&r.changes),
        [
            ("data".into(), Added),
            ("logs".into(), Changed),
            ("url".into(), Changed)
        ]
    );

    // Delete.
    p.write(&json!({"resources": {"data": bucket("data", "k2")}, "outputs": {}}));
    let r = plan(&h, &p, &[], false).await;
    assert_eq!(
        r.delta.unwrap(),
        Delta {
            deleted_resources: 1,
            deleted_outputs: 2,
            ..Default::default()
        }
    );

    // A program error fails both phases with Pulumi's diagnostic.
    p.write(&json!({"resources": {}, "fail": "Program failed with an unhandled exception: boom"}));
    let r = plan(&h, &p, &[], false).await;
    assert!(!r.success);
    assert!(r.error.contains("unhandled exception: boom"), "{}", r.error);
    let r = apply(&h, &p).await;
    assert!(!r.success);
    assert!(r.error.contains("unhandled exception: boom"), "{}", r.error);

    h.shutdown(Duration::from_secs(30)).await.unwrap();
}
