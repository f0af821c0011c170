//! The Python example plugin (examples/python-runner) through the Rust host side: a
//! third-party plugin in another language speaks the same contract.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_proto::runner::v1::{
    apply_response, plan_response, ApplyRequest, DescribeRequest, PlanRequest, Workspace,
};
use cairn_proto::v1::{ChangeAction, ChangePhase};
use cairn_runner_sdk::{launch, LaunchOptions};
use tokio_stream::StreamExt;

fn python() -> PathBuf {
    let path = std::env::var_os("CAIRN_PYTHON").map_or_else(
        || {
            let tools = std::env::var_os("CAIRN_TOOLS_DIR").map_or_else(
                || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools"),
                PathBuf::from,
            );
            // A symlink to a venv's python does not activate the venv (Python looks for
            // pyvenv.cfg beside the path it was started by), so prefer the venv's own path.
            let venv = tools.join("venv/bin/python3");
            if venv.exists() {
                venv
            } else {
                tools.join("bin/python3")
            }
        },
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask provision`",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn python_plugin_plans_and_applies() {
    let plugin_bin = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/python-runner/cairn-runner-shell");
    let options = LaunchOptions {
        env: vec![("CAIRN_PYTHON".into(), python().into())],
        handshake_timeout: Duration::from_secs(120),
        ..LaunchOptions::default()
    };
    let plugin = launch(&plugin_bin, options)
        .await
        .expect("python plugin launches");
    let mut client = plugin.client.clone();
    let d = client
        .describe(DescribeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.vendor, "shell");

    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join(".cairn")).unwrap();
    std::fs::write(
        tmp.path().join("plan.sh"),
        "echo \"would deploy with $API_TOKEN\"\necho '[{\"action\":\"added\",\"address\":\"svc.web\",\"type\":\"service\"}]' > .cairn/changes.json\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("apply.sh"),
        "echo deployed > deployed.txt\necho applied\n",
    )
    .unwrap();
    let ws = Workspace {
        root_dir: tmp.path().display().to_string(),
        env: [("API_TOKEN".to_owned(), "py-secret-123".to_owned())].into(),
        secret_values: vec!["py-secret-123".to_owned()],
        ..Default::default()
    };

    let mut stream = client
        .plan(PlanRequest {
            workspace: Some(ws.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (mut lines, mut result) = (Vec::new(), None);
    while let Some(msg) = stream.next().await {
        match msg.unwrap().event.unwrap() {
            plan_response::Event::Log(l) => lines.push(l.message),
            plan_response::Event::Result(r) => result = Some(r),
            plan_response::Event::Phase(_) | plan_response::Event::Saved(_) => {}
        }
    }
    assert_eq!(lines, ["would deploy with ***"]);
    let result = result.unwrap();
    assert!(result.success, "{}", result.error);
    assert!(!result.no_op);
    assert_eq!(result.delta.unwrap().added_resources, 1);
    assert_eq!(result.changes[0].action(), ChangeAction::Added);
    assert_eq!(result.changes[0].phase(), ChangePhase::Plan);
    assert_eq!(
        result.changes[0].entity.as_ref().unwrap().address,
        "svc.web"
    );

    let mut stream = client
        .apply(ApplyRequest {
            workspace: Some(ws),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut result = None;
    while let Some(msg) = stream.next().await {
        if let Some(apply_response::Event::Result(r)) = msg.unwrap().event {
            result = Some(r);
        }
    }
    assert!(result.unwrap().success);
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("deployed.txt")).unwrap(),
        "deployed\n"
    );

    let socket_dir = plugin.handshake.socket.parent().unwrap().to_owned();
    let status = plugin.shutdown(Duration::from_secs(30)).await.unwrap();
    assert!(status.success(), "{status}");
    assert!(!socket_dir.exists(), "socket directory removed");
}
