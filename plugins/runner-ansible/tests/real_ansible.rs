//! Launches the real plugin through the SDK host side and drives the real `ansible-playbook`
//! from the shared tool layout on localhost (connection local).

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_proto::runner::v1::{
    apply_response, plan_response, ApplyRequest, ApplyResult, DescribeRequest, PlanRequest,
    PlanResult, Workspace,
};
use cairn_proto::v1::{ChangePhase, LogLine};
use cairn_runner_sdk::{launch, LaunchOptions, PluginHandle};
use tokio_stream::StreamExt;

const SECRET: &str = "ans-secret-value-77";

fn tools_dir() -> PathBuf {
    std::env::var_os("CAIRN_TOOLS_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools"),
        PathBuf::from,
    )
}

async fn start() -> PluginHandle {
    let bin = tools_dir().join("bin/ansible-playbook");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo xtask provision`",
        bin.display()
    );
    let options = LaunchOptions {
        env: vec![("CAIRN_ANSIBLE_PLAYBOOK_BIN".into(), bin.into())],
        ..LaunchOptions::default()
    };
    launch(
        Path::new(env!("CARGO_BIN_EXE_cairn-runner-ansible")),
        options,
    )
    .await
    .expect("plugin launches")
}

const PLAYBOOK: &str = r#"
- hosts: all
  gather_facts: false
  tasks:
    - name: write file
      ansible.builtin.copy:
        dest: "{{ out_dir }}/hello.txt"
        content: "hello {{ token }}\n"
      tags: [files]
    - name: write other
      ansible.builtin.copy:
        dest: "{{ out_dir }}/other.txt"
        content: "other\n"
      tags: [other]
    - name: ping
      ansible.builtin.ping:
"#;

struct Project {
    tmp: tempfile::TempDir,
}

impl Project {
    fn new(playbook: &str, inventory: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("playbook.yml"), playbook).unwrap();
        std::fs::write(tmp.path().join("inventory"), inventory).unwrap();
        Self { tmp }
    }

    fn workspace(&self) -> Workspace {
        Workspace {
            root_dir: self.tmp.path().display().to_string(),
            project_root: String::new(),
            secret_values: vec![SECRET.to_owned()],
            variables: [
                ("out_dir".to_owned(), self.tmp.path().display().to_string()),
                ("token".to_owned(), SECRET.to_owned()),
            ]
            .into(),
            ..Default::default()
        }
    }

    fn read(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.tmp.path().join(name)).ok()
    }
}

const LOCAL: &str = "localhost ansible_connection=local ansible_python_interpreter=\"{{ansible_playbook_python}}\"\n";

async fn plan(h: &PluginHandle, p: &Project, targets: &[&str]) -> PlanResult {
    let mut stream = h
        .client
        .clone()
        .plan(PlanRequest {
            workspace: Some(p.workspace()),
            targets: targets.iter().map(|t| t.to_string()).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (mut logs, mut result) = (Vec::new(), None);
    while let Some(msg) = stream.next().await {
        match msg.unwrap().event.unwrap() {
            plan_response::Event::Log(l) => logs.push(l),
            plan_response::Event::Result(r) => result = Some(r),
            plan_response::Event::Phase(_) => {}
            // Its apply plans again; there is no saved plan that could be applied early.
            plan_response::Event::Saved(_) => panic!("the ansible plugin announced a saved plan"),
        }
    }
    check_no_secret(&logs);
    let result = result.expect("plan ends with a result");
    assert!(!result.plan_json.contains(SECRET));
    result
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
    let (mut logs, mut result) = (Vec::new(), None);
    while let Some(msg) = stream.next().await {
        match msg.unwrap().event.unwrap() {
            apply_response::Event::Log(l) => logs.push(l),
            apply_response::Event::Result(r) => result = Some(r),
            apply_response::Event::Phase(_) => {}
        }
    }
    check_no_secret(&logs);
    result.expect("apply ends with a result")
}

fn check_no_secret(logs: &[LogLine]) {
    for l in logs {
        assert!(!l.message.contains(SECRET), "secret leaked: {}", l.message);
    }
}

fn addresses(changes: &[cairn_proto::v1::Change]) -> Vec<String> {
    let mut v: Vec<_> = changes
        .iter()
        .map(|c| c.entity.as_ref().unwrap().address.clone())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn check_apply_idempotence_and_targets() {
    let h = start().await;
    let described = h
        .client
        .clone()
        .describe(DescribeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(described.vendor, "ansible");
    assert!(!described.vendor_version.is_empty());

    let p = Project::new(PLAYBOOK, LOCAL);
    let r = plan(&h, &p, &[]).await;
    assert!(r.success, "{}", r.error);
    assert!(!r.no_op);
    assert_eq!(
        addresses(&r.changes),
        ["localhost/write file", "localhost/write other"]
    );
    assert!(r.changes.iter().all(|c| c.phase() == ChangePhase::Plan));
    assert_eq!(r.delta.unwrap().changed_resources, 2);
    assert_eq!(p.read("hello.txt"), None, "check mode changes nothing");

    // Targeted by tag.
    let r = plan(&h, &p, &["tag:other"]).await;
    assert!(r.success, "{}", r.error);
    assert_eq!(addresses(&r.changes), ["localhost/write other"]);

    let r = apply(&h, &p).await;
    assert!(r.success, "{}", r.error);
    assert_eq!(
        addresses(&r.changes),
        ["localhost/write file", "localhost/write other"]
    );
    assert!(r.changes.iter().all(|c| c.phase() == ChangePhase::Apply));
    assert_eq!(p.read("hello.txt").unwrap(), format!("hello {SECRET}\n"));

    let r = plan(&h, &p, &[]).await;
    assert!(r.success, "{}", r.error);
    assert!(
        r.no_op,
        "second run changes nothing: {:?}",
        addresses(&r.changes)
    );

    // Limited to a host that is not in the inventory: ansible refuses.
    let r = plan(&h, &p, &["nosuchhost"]).await;
    assert!(!r.success);

    h.shutdown(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_hosts_and_failures_are_reported() {
    let h = start().await;
    let inventory = format!("{LOCAL}badhost ansible_host=127.0.0.1 ansible_port=1 ansible_connection=ssh ansible_ssh_common_args='-o ConnectTimeout=5'\n");
    let p = Project::new(PLAYBOOK, &inventory);
    let r = plan(&h, &p, &[]).await;
    assert!(!r.success);
    assert!(r.error.contains("badhost: unreachable"), "{}", r.error);

    let failing = "- hosts: all\n  gather_facts: false\n  tasks:\n    - name: boom\n      ansible.builtin.fail:\n        msg: deliberate failure\n";
    let p = Project::new(failing, LOCAL);
    let r = apply(&h, &p).await;
    assert!(!r.success);
    assert!(
        r.error.contains("task `boom` failed: deliberate failure"),
        "{}",
        r.error
    );
    h.shutdown(Duration::from_secs(30)).await.unwrap();
}
