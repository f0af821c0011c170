//! StateService over real gRPC, on states the real Terraform CLI wrote through the HTTP state
//! backend with a real lease's credentials; import of a state a local-backend Terraform wrote.

mod common;
mod tfhelp;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::v1 as pb;
use cairn_proto::v1::state_service_client::StateServiceClient;
use cairn_store::Store;
use common::{code, Authed, Bearer, TestAgent, TestServer, SHA_A};
use serde_json::Value;
use tfhelp::{http, write_project, Creds, Tf};
use tonic::service::interceptor::InterceptedService;
use tonic::Code;

struct Fixture {
    server: TestServer,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        cairn_store_sqlite::SqliteStore::open(dir.path().join("cairn.db"))
            .await
            .unwrap(),
    );
    let server = TestServer::start_on(Duration::from_secs(60), Some(store.clone())).await;
    server.stack("net", false, SHA_A).await;
    Fixture {
        server,
        store,
        _dir: dir,
    }
}

fn states(s: &TestServer, key: &str) -> StateServiceClient<Authed> {
    StateServiceClient::new(InterceptedService::new(
        s.channel.clone(),
        Bearer(Some(key.to_string())),
    ))
}

fn outputs(list: &[pb::StateOutput]) -> Vec<(&str, &str, bool)> {
    list.iter()
        .map(|o| (o.name.as_str(), o.value_json.as_str(), o.sensitive))
        .collect()
}

fn info(id: &str) -> String {
    serde_json::json!({"ID": id, "Operation": "OperationTypeApply", "Who": "alice@laptop",
                       "Version": "1.0.3", "Created": "2024-01-01T00:00:00Z", "Path": "", "Info": ""})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_outputs_restore_and_locks_over_grpc() {
    let f = fixture().await;
    let s = &f.server;
    let reader = s.key("rita", pb::Role::Reader).await;
    let writer = s.key("walt", pb::Role::Writer).await;
    let tf = Tf::new();
    let mut agent = TestAgent::connect(s, 1).await;
    let run = s.trigger("net", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    let c = Creds::of(&lease);

    // Terraform writes serial 0 (content v1), then serial 1 (content v2).
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("managed/a.txt");
    let dir = work.path().join("project");
    write_project(&dir, &target, "v1");
    tf.init(&dir, &c).await;
    let apply = ["apply", "-auto-approve", "-input=false", "-no-color"];
    tf.ok(&dir, &apply).await;
    write_project(&dir, &target, "v2");
    tf.ok(&dir, &apply).await;

    // Readers list versions with redacted outputs, newest first, in pages.
    let page = states(s, &reader)
        .list_state_versions(pb::ListStateVersionsRequest {
            stack_id: "net".into(),
            deployment: String::new(),
            page: Some(pb::PageRequest {
                page_size: 1,
                page_token: String::new(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.versions.len(), 1);
    let v1 = &page.versions[0];
    assert_eq!((v1.serial, v1.deployment.as_str()), (1, "default"));
    assert_eq!(v1.created_by_run, run.id);
    assert!(v1.size_bytes > 0);
    assert_eq!(
        outputs(&v1.outputs),
        [("content", "\"v2\"", false), ("token", "", true)]
    );
    assert_eq!(v1.outputs[0].type_json, "\"string\"");
    let rest = states(s, &reader)
        .list_state_versions(pb::ListStateVersionsRequest {
            stack_id: "net".into(),
            deployment: "default".into(),
            page: Some(pb::PageRequest {
                page_size: 5,
                page_token: page.next_page_token.clone(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rest.versions.iter().map(|v| v.serial).collect::<Vec<_>>(),
        [0]
    );
    assert_eq!(rest.next_page_token, "");
    let lineage = v1.lineage.clone();
    assert_eq!(rest.versions[0].lineage, lineage);
    assert_eq!(
        code(
            states(s, &reader)
                .list_state_versions(pb::ListStateVersionsRequest {
                    stack_id: "nope".into(),
                    ..Default::default()
                })
                .await
        ),
        Code::NotFound
    );

    // The document goes to admins only.
    let current = states(s, &reader)
        .get_state_version(pb::GetStateVersionRequest {
            stack_id: "net".into(),
            deployment: String::new(),
            serial: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(current.version.unwrap().serial, 1);
    assert!(current.state.is_empty() && current.state_withheld);
    let old = states(s, &s.admin)
        .get_state_version(pb::GetStateVersionRequest {
            stack_id: "net".into(),
            deployment: String::new(),
            serial: Some(0),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!old.state_withheld);
    assert_eq!(
        old.state,
        f.store
            .get_state_version("net", "default", 0)
            .await
            .unwrap()
            .body
    );
    let doc: Value = serde_json::from_slice(&old.state).unwrap();
    assert_eq!(doc["outputs"]["token"]["value"], "tok-v1");
    let missing = states(s, &s.admin)
        .get_state_version(pb::GetStateVersionRequest {
            stack_id: "net".into(),
            deployment: String::new(),
            serial: Some(7),
        })
        .await;
    assert_eq!(code(missing), Code::NotFound);
    assert_eq!(
        code(
            states(s, &reader)
                .get_outputs(pb::GetOutputsRequest {
                    stack_id: "net".into(),
                    deployment: "staging".into(),
                })
                .await
        ),
        Code::NotFound,
        "a deployment without state has no outputs"
    );

    let outs = states(s, &reader)
        .get_outputs(pb::GetOutputsRequest {
            stack_id: "net".into(),
            deployment: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outs.serial, 1);
    assert_eq!(
        outputs(&outs.outputs),
        [("content", "\"v2\"", false), ("token", "", true)]
    );

    // A held lock: its holder is visible, restore is refused while it is held.
    let auth = Some((c.username.as_str(), c.password.as_str()));
    let r = http(
        s.addr,
        "LOCK",
        &c.path(),
        auth,
        info("held-1").as_bytes(),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let lock = states(s, &reader)
        .get_state_lock(pb::GetStateLockRequest {
            stack_id: "net".into(),
            deployment: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .lock
        .expect("a lock");
    assert_eq!(lock.id, "held-1");
    assert_eq!(lock.holder_run_id, run.id);
    assert_eq!(lock.holder_worker_id, agent.worker_id);
    assert_eq!(lock.who, "alice@laptop");
    assert_eq!(lock.operation, "OperationTypeApply");
    let restore = |key: String, serial: i64| {
        let mut client = states(s, &key);
        async move {
            client
                .restore_state_version(pb::RestoreStateVersionRequest {
                    stack_id: "net".into(),
                    deployment: String::new(),
                    serial,
                })
                .await
        }
    };
    assert_eq!(
        code(restore(writer.clone(), 0).await),
        Code::PermissionDenied
    );
    let refused = restore(s.admin.clone(), 0).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains(&run.id) && refused.message().contains("held-1"),
        "{}",
        refused.message()
    );

    // Force-unlock: admins only, and the id must be the held lock's.
    let unlock = |key: String, id: &str| {
        let mut client = states(s, &key);
        let id = id.to_string();
        async move {
            client
                .force_unlock(pb::ForceUnlockRequest {
                    stack_id: "net".into(),
                    deployment: String::new(),
                    lock_id: id,
                })
                .await
        }
    };
    assert_eq!(
        code(unlock(writer.clone(), "held-1").await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(unlock(s.admin.clone(), "other").await),
        Code::InvalidArgument
    );
    let released = unlock(s.admin.clone(), "held-1")
        .await
        .unwrap()
        .into_inner()
        .lock
        .unwrap();
    assert_eq!(released.holder_run_id, run.id);
    assert_eq!(
        f.store.get_state_lock("net", "default").await.unwrap(),
        None
    );
    assert_eq!(
        code(unlock(s.admin.clone(), "held-1").await),
        Code::FailedPrecondition
    );

    // Restoring serial 0 writes its document as serial 2 of the same lineage.
    let restored = restore(s.admin.clone(), 0)
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap();
    assert_eq!((restored.serial, restored.lineage.as_str()), (2, &*lineage));
    assert_eq!(restored.created_by_run, "");
    assert!(
        restored.note.starts_with("restored from serial 0 by "),
        "{}",
        restored.note
    );
    assert_eq!(outputs(&restored.outputs)[0], ("content", "\"v1\"", false));
    assert_eq!(
        f.store.get_state_lock("net", "default").await.unwrap(),
        None,
        "the restore's own lock is released"
    );
    assert_eq!(code(restore(s.admin.clone(), 9).await), Code::NotFound);

    // Terraform reads the restored version and keeps writing the same lineage after it.
    let out = tf
        .ok(&dir, &["output", "-no-color", "-raw", "content"])
        .await;
    assert_eq!(out.stdout, "v1");
    tf.ok(&dir, &apply).await;
    let after = f
        .store
        .current_state_version("net", "default")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((after.serial, after.lineage.as_str()), (3, &*lineage));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "v2");
}

/// A state written by Terraform with its default local backend, as an existing workspace has.
async fn local_state(tf: &Tf, dir: &Path, target: &Path) -> Vec<u8> {
    write_project(dir, target, "v1");
    tf.ok(dir, &["init", "-input=false", "-no-color"]).await;
    tf.ok(
        dir,
        &["apply", "-auto-approve", "-input=false", "-no-color"],
    )
    .await;
    std::fs::read(dir.join("terraform.tfstate")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_local_state_is_managed_and_its_import_run_plans_no_changes() {
    let f = fixture().await;
    let s = &f.server;
    let writer = s.key("walt", pb::Role::Writer).await;
    let tf = Tf::new();
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("managed/a.txt");
    let local = work.path().join("local");
    let body = local_state(&tf, &local, &target).await;
    let local_doc: Value = serde_json::from_slice(&body).unwrap();

    let import = |key: String, state: Vec<u8>, force: bool| {
        let mut client = states(s, &key);
        async move {
            client
                .import_state(pb::ImportStateRequest {
                    stack_id: "net".into(),
                    deployment: String::new(),
                    state,
                    force,
                })
                .await
        }
    };
    // Not a state: refused, naming the field, nothing stored.
    let bad = import(writer.clone(), b"{\"serial\":1}".to_vec(), false)
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("state"), "{}", bad.message());
    // A locked state refuses the import.
    let lock = cairn_store::StateLock {
        stack_id: "net".into(),
        deployment: "default".into(),
        id: "busy".into(),
        holder_run_id: "run_someone".into(),
        holder_worker_id: "worker_x".into(),
        info_json: info("busy"),
        created_at: 1,
    };
    f.store.acquire_state_lock(lock).await.unwrap();
    let locked = import(writer.clone(), body.clone(), false)
        .await
        .unwrap_err();
    assert_eq!(locked.code(), Code::FailedPrecondition);
    assert!(
        locked.message().contains("run_someone"),
        "{}",
        locked.message()
    );
    f.store
        .release_state_lock("net", "default", "busy")
        .await
        .unwrap();
    assert_eq!(
        f.store
            .current_state_version("net", "default")
            .await
            .unwrap(),
        None
    );

    let imported = import(writer.clone(), body.clone(), false)
        .await
        .unwrap()
        .into_inner();
    let version = imported.version.unwrap();
    assert_eq!(version.serial, local_doc["serial"].as_i64().unwrap());
    assert_eq!(version.lineage, local_doc["lineage"].as_str().unwrap());
    assert!(
        version.note.starts_with("imported by walt"),
        "{}",
        version.note
    );
    let run = imported.run.unwrap();
    assert_eq!(version.created_by_run, run.id);
    assert_eq!(run.mode(), pb::RunMode::Import);
    assert_eq!(run.r#type(), pb::RunType::Tracked);
    assert_eq!(run.deployment, "default");
    assert_eq!(
        run.steps
            .iter()
            .map(|st| (st.kind(), st.state()))
            .collect::<Vec<_>>(),
        [(pb::StepKind::Import, pb::StepState::Success)]
    );
    let stored = f
        .store
        .current_state_version("net", "default")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.body, body, "stored exactly as Terraform wrote it");
    assert_eq!(
        f.store.get_state_lock("net", "default").await.unwrap(),
        None,
        "the import's lock is released"
    );

    // The deployment has state now: a second import needs force, and force needs an admin.
    assert_eq!(
        code(import(writer.clone(), body.clone(), false).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(import(writer.clone(), body.clone(), true).await),
        Code::PermissionDenied
    );

    // The IMPORT run plans against the imported state: Terraform, given the run's lease
    // credentials in a fresh work tree, sees no changes.
    let mut agent = TestAgent::connect(s, 1).await;
    let lease = agent.lease().await;
    assert_eq!(lease.run_id, run.id);
    assert!(!lease.destroy);
    let c = Creds::of(&lease);
    let managed = work.path().join("managed-tree");
    write_project(&managed, &target, "v1");
    tf.init(&managed, &c).await;
    let plan = tf
        .run(
            &managed,
            &["plan", "-detailed-exitcode", "-input=false", "-no-color"],
        )
        .await;
    assert_eq!(
        plan.code, 0,
        "expected no changes:\n{}{}",
        plan.stdout, plan.stderr
    );
    agent.plan_through(&lease, &[]).await;
    let finished = s.wait_state(&run.id, pb::RunState::Finished).await;
    assert_eq!(finished.steps[0].kind(), pb::StepKind::Import);

    // An admin may force a replacement: stored as the next version of the existing lineage.
    let forced = import(s.admin.clone(), body.clone(), true)
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap();
    assert_eq!(forced.serial, version.serial + 1);
    assert_eq!(forced.lineage, version.lineage);
    assert!(forced.note.contains("forced"), "{}", forced.note);
    let doc: Value = serde_json::from_slice(
        &f.store
            .current_state_version("net", "default")
            .await
            .unwrap()
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(doc["serial"], forced.serial);
}

fn git(dir: &Path, args: &[&str]) {
    let s = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .status()
        .unwrap();
    assert!(s.success(), "git {args:?}");
}

fn net_state(serial: i64, vpc: &str, created_at: i64) -> cairn_store::StateVersion {
    let body = serde_json::json!({
        "version": 4, "serial": serial, "lineage": "lin-net",
        "outputs": {"vpc_id": {"value": vpc, "type": "string"}}, "resources": []
    })
    .to_string();
    cairn_store::StateVersion {
        stack_id: "net".into(),
        deployment: "default".into(),
        serial,
        lineage: "lin-net".into(),
        outputs_json: serde_json::json!({ "vpc_id": vpc }).to_string(),
        body: body.into_bytes(),
        created_at,
        created_by_run: format!("run_net_{serial}"),
        note: String::new(),
    }
}

/// Stack `app` tracking a real one-commit Git repository (project root `app`): what a
/// configuration version is read from. Returns the repository and its commit.
async fn app_stack(s: &TestServer) -> (tempfile::TempDir, String) {
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(repo.path().join("app")).unwrap();
    std::fs::write(
        repo.path().join("app/main.tf"),
        "variable \"vpc_id\" {\n  type = string\n}\n",
    )
    .unwrap();
    git(repo.path(), &["init", "-q", "-b", "main"]);
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "app"]);
    let head = String::from_utf8(
        std::process::Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(repo.path())
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let mut stacks = s.stacks(&s.admin);
    stacks
        .create_stack(pb::CreateStackRequest {
            stack: Some(pb::Stack {
                id: "app".into(),
                name: "app".into(),
                repository: repo.path().display().to_string(),
                branch: "main".into(),
                project_root: "app".into(),
                vendor: "terraform".into(),
                ..Default::default()
            }),
            env: vec![],
        })
        .await
        .unwrap();
    stacks
        .sync_stack(pb::SyncStackRequest {
            stack_id: "app".into(),
            commit: Some(pb::Commit {
                hash: head.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();

    (repo, head)
}

/// A server that stopped after net's output changed but before the consuming stack got its new
/// configuration version: the next server start finds the change and makes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_change_missed_by_a_stopped_server_is_propagated_at_start() {
    let s = TestServer::start().await;
    s.stack("net", false, SHA_A).await;
    let (_repo, head) = app_stack(&s).await;

    // app's deployment reads net's vpc_id; its version 1 was made while serial 1 was current.
    let store = s.state.store.clone();
    let mut d = cairn_core::Deployment::new("app", "default", 1);
    d.inputs.insert(
        "vpc_id".into(),
        cairn_core::InputValue::Upstream(cairn_core::UpstreamRef {
            stack: "net".into(),
            deployment: "default".into(),
            output: "vpc_id".into(),
        }),
    );
    store.create_deployment(d.clone()).await.unwrap();
    let now = cairn_core::now_nanos();
    store
        .add_state_version(net_state(1, "vpc-1", now - 10))
        .await
        .unwrap();
    store
        .add_configuration_version(cairn_core::ConfigurationVersion {
            id: "cv-1".into(),
            stack_id: "app".into(),
            seq: 0,
            commit_sha: head.clone(),
            content_digest: "d".into(),
            deployments: vec![d.snapshot()],
            source: cairn_core::ConfigSource::Manual,
            created_at: now,
        })
        .await
        .unwrap();
    // Written behind the running server's back (as if it stopped before propagating).
    store
        .add_state_version(net_state(2, "vpc-2", now + 10))
        .await
        .unwrap();
    assert_eq!(
        store
            .list_configuration_versions("app", 0, 10)
            .await
            .unwrap()
            .len(),
        1
    );

    let s = s.restart(Duration::from_secs(60)).await;
    let store = s.state.store.clone();
    // The version, its run and the run's log line are written one after another by the
    // start-up catch-up: wait for the last of them.
    let wanted = "input vpc_id of deployment default reads output vpc_id of net/default, \
                  changed at serial 2";
    let mut seen = (Vec::new(), None, Vec::new());
    for _ in 0..500 {
        let versions = store
            .list_configuration_versions("app", 0, 10)
            .await
            .unwrap();
        let run = match versions.first() {
            Some(v) if versions.len() > 1 => store
                .list_runs("app", &cairn_store::Page::first(10))
                .await
                .unwrap()
                .items
                .into_iter()
                .find(|r| r.config_version == v.seq),
            _ => None,
        };
        let logs = match &run {
            Some(run) => {
                s.runs(&s.admin)
                    .get_run_logs(pb::GetRunLogsRequest {
                        run_id: run.id.clone(),
                        after_seq: 0,
                        limit: 0,
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .lines
            }
            None => Vec::new(),
        };
        let done = logs.iter().any(|l| l.message == wanted);
        seen = (versions, run, logs);
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (versions, run, logs) = seen;
    assert_eq!(versions.len(), 2, "a new configuration version of app");
    assert_eq!(versions[0].source, cairn_core::ConfigSource::Upstream);
    assert_eq!(versions[0].commit_sha, head);
    let run = run.expect("a run of the new version");
    assert_eq!(run.deployment, "default");
    assert!(logs.iter().any(|l| l.message == wanted), "{logs:?}");

    // net's only consumer is up to date now: a sweep finds nothing more to do.
    assert_eq!(
        cairn_server::upstream::sweep(&s.state).await.unwrap(),
        Vec::<String>::new()
    );
}

/// On a stack with declared deployments, the IMPORT run is a deployment run of the imported
/// deployment's newest configuration version: it plans with that version's commit and inputs.
/// A deployment the stack does not declare is refused before anything is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_into_a_deployment_plans_with_its_configuration_version() {
    let s = TestServer::start().await;
    let (_repo, head) = app_stack(&s).await;
    let store = s.state.store.clone();
    let mut d = cairn_core::Deployment::new("app", "prod", 1);
    d.inputs.insert(
        "vpc_id".into(),
        cairn_core::InputValue::Literal("vpc-literal".into()),
    );
    store.create_deployment(d.clone()).await.unwrap();
    let version = store
        .add_configuration_version(cairn_core::ConfigurationVersion {
            id: "cv-1".into(),
            stack_id: "app".into(),
            seq: 0,
            commit_sha: head.clone(),
            content_digest: "d".into(),
            deployments: vec![d.snapshot()],
            source: cairn_core::ConfigSource::Manual,
            created_at: 1,
        })
        .await
        .unwrap();
    d.last_config_version = version.seq;
    store.update_deployment(d).await.unwrap();

    let doc = serde_json::json!({"version": 4, "serial": 3, "lineage": "lin-app",
        "outputs": {}, "resources": []})
    .to_string()
    .into_bytes();
    let import = |deployment: &str| {
        let mut client = states(&s, &s.admin);
        let (deployment, doc) = (deployment.to_string(), doc.clone());
        async move {
            client
                .import_state(pb::ImportStateRequest {
                    stack_id: "app".into(),
                    deployment,
                    state: doc,
                    force: false,
                })
                .await
        }
    };
    let refused = import("staging").await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("deployment") && refused.message().contains("prod"),
        "{}",
        refused.message()
    );
    assert_eq!(
        store.current_state_version("app", "staging").await.unwrap(),
        None
    );

    let run = import("prod").await.unwrap().into_inner().run.unwrap();
    assert_eq!(run.mode(), pb::RunMode::Import);
    assert_eq!(run.config_version, version.seq);
    assert_eq!(run.deployment, "prod");
    let mut agent = TestAgent::connect(&s, 1).await;
    let lease = agent.lease().await;
    assert_eq!(lease.run_id, run.id);
    assert_eq!(lease.commit_sha, head);
    assert_eq!(
        lease.variables.get("vpc_id").map(String::as_str),
        Some("vpc-literal")
    );
    let c = Creds::of(&lease);
    assert!(c.address.ends_with("/state/app/prod"), "{}", c.address);
    let got = http(
        s.addr,
        "GET",
        &c.path(),
        Some((&c.username, &c.password)),
        b"",
        &[],
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body.as_bytes(), doc.as_slice());
}
