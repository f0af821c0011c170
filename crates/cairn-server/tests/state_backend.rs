//! The HTTP state backend against the real Terraform CLI (1.0.3 from the shared tool layout,
//! `$CAIRN_TOOLS_DIR`, default `<workspace>/target/tools`, with the cairntest provider from its
//! filesystem mirror) and against raw HTTP requests for what Terraform never sends on purpose.
//! Credentials come from real leases of a real server on 127.0.0.1:0.

mod common;
mod tfhelp;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use cairn_proto::agent::v1 as apb;
use cairn_proto::v1 as pb;
use cairn_store::Store;
use common::{TestAgent, TestServer, SHA_A};
use serde_json::Value;
use tfhelp::{copy_dir, http, write_project, Creds, Tf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Fixture {
    server: TestServer,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

async fn fixture(lease_timeout: Duration) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        cairn_store_sqlite::SqliteStore::open(dir.path().join("cairn.db"))
            .await
            .unwrap(),
    );
    let server = TestServer::start_on(lease_timeout, Some(store.clone())).await;
    server.stack("net", false, SHA_A).await;
    Fixture {
        server,
        store,
        _dir: dir,
    }
}

async fn current_serial(store: &dyn Store) -> Option<i64> {
    store
        .current_state_version("net", "default")
        .await
        .unwrap()
        .map(|v| v.serial)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_keeps_its_state_in_cairn_across_work_trees() {
    let f = fixture(Duration::from_secs(60)).await;
    let s = &f.server;
    let tf = Tf::new();
    let mut agent = TestAgent::connect(s, 1).await;
    let run = s.trigger("net", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    assert_eq!(lease.run_id, run.id);
    let c = Creds::of(&lease);
    assert_eq!(
        c.address,
        format!("http://{}/state/net/default", s.addr),
        "the address is the server's own"
    );
    assert_eq!(c.username, format!("run:{}", run.id));
    assert!(
        lease
            .secret_names
            .contains(&"CAIRN_STATE_PASSWORD".to_string()),
        "the password is masked in logs"
    );
    assert!(!lease.env.contains_key("CAIRN_STATE_READ_ONLY"));

    // First work tree: apply → the first state version, written by this run, lock released.
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("managed/a.txt");
    let one = work.path().join("one");
    write_project(&one, &target, "v1");
    tf.init(&one, &c).await;
    tf.ok(
        &one,
        &["apply", "-auto-approve", "-input=false", "-no-color"],
    )
    .await;
    let v1 = f
        .store
        .current_state_version("net", "default")
        .await
        .unwrap()
        .expect("a state version");
    // Terraform numbers a new state's first write 0.
    assert_eq!(v1.serial, 0);
    assert_eq!(v1.created_by_run, run.id);
    let outputs: Value = serde_json::from_str(&v1.outputs_json).unwrap();
    assert_eq!(
        outputs,
        serde_json::json!({"content": "v1", "token": "***"})
    );
    assert_eq!(
        f.store.get_state_lock("net", "default").await.unwrap(),
        None
    );
    assert!(
        !one.join("terraform.tfstate").exists(),
        "no local state is written"
    );

    // A fresh work tree at the same commit plans nothing: the state came from Cairn.
    let two = work.path().join("two");
    write_project(&two, &target, "v1");
    tf.init(&two, &c).await;
    let plan = tf
        .run(
            &two,
            &["plan", "-detailed-exitcode", "-input=false", "-no-color"],
        )
        .await;
    assert_eq!(
        plan.code, 0,
        "expected a no-op plan:\n{}{}",
        plan.stdout, plan.stderr
    );
    assert_eq!(current_serial(f.store.as_ref()).await, Some(0));

    // A change planned into a file, applied from a copy of the work tree (as a restored
    // workspace is) after another `init -reconfigure`: the next serial.
    write_project(&two, &target, "v2");
    let plan = tf
        .run(
            &two,
            &[
                "plan",
                "-detailed-exitcode",
                "-input=false",
                "-no-color",
                "-out=plan.tfplan",
            ],
        )
        .await;
    assert_eq!(
        plan.code, 2,
        "expected changes:\n{}{}",
        plan.stdout, plan.stderr
    );
    let restored = work.path().join("restored");
    copy_dir(&two, &restored);
    tf.init(&restored, &c).await;
    tf.ok(
        &restored,
        &["apply", "-input=false", "-no-color", "plan.tfplan"],
    )
    .await;
    let v2 = f
        .store
        .current_state_version("net", "default")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v2.serial, 1);
    assert_eq!(v2.lineage, v1.lineage);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "v2");
    let listed = f
        .store
        .list_state_versions("net", "default", &cairn_store::Page::first(10))
        .await
        .unwrap()
        .items;
    assert_eq!(
        listed.iter().map(|v| v.serial).collect::<Vec<_>>(),
        vec![1, 0]
    );

    let addr = s.addr;
    let path = c.path();
    let auth = Some((c.username.as_str(), c.password.as_str()));

    // GET returns the current document.
    let got = http(addr, "GET", &path, auth, b"", &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body.as_bytes(), v2.body.as_slice());

    // A stale serial is refused and the previous version stays current.
    let stale = http(addr, "POST", &path, auth, &v1.body, &[]).await;
    assert_eq!(stale.status, 409, "{}", stale.body);
    assert_eq!(current_serial(f.store.as_ref()).await, Some(1));

    // So is another lineage, even with a higher serial.
    let mut foreign: Value = serde_json::from_slice(&v2.body).unwrap();
    foreign["serial"] = 3.into();
    foreign["lineage"] = "00000000-0000-0000-0000-000000000000".into();
    let refused = http(
        addr,
        "POST",
        &path,
        auth,
        foreign.to_string().as_bytes(),
        &[],
    )
    .await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(refused.body.contains("lineage"), "{}", refused.body);
    assert_eq!(current_serial(f.store.as_ref()).await, Some(1));

    // Invalid documents: 400 and nothing stored.
    let lineage = v2.lineage.clone();
    let bad_docs = [
        "{not json".to_string(),
        "[1,2]".into(),
        r#"{"version":4,"lineage":"x"}"#.into(),
        r#"{"version":4,"serial":9}"#.into(),
        // Valid serial and lineage, but not a Terraform state document.
        format!(r#"{{"serial":9,"lineage":"{lineage}"}}"#),
        format!(r#"{{"version":9,"serial":9,"lineage":"{lineage}"}}"#),
        format!(r#"{{"version":4,"serial":9,"lineage":"{lineage}","outputs":[1]}}"#),
        format!(r#"{{"version":4,"serial":9,"lineage":"{lineage}","outputs":{{"a":1}}}}"#),
        format!(r#"{{"version":4,"serial":9,"lineage":"{lineage}","resources":{{}}}}"#),
    ];
    for bad in bad_docs.iter().map(|d| d.as_bytes()) {
        let r = http(addr, "POST", &path, auth, bad, &[]).await;
        assert_eq!(
            r.status,
            400,
            "{:?}: {}",
            String::from_utf8_lossy(bad),
            r.body
        );
    }
    assert_eq!(current_serial(f.store.as_ref()).await, Some(1));

    // A body above the limit is refused from its declared length.
    let big = (33u64 << 20).to_string();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let enc =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password));
    stream
        .write_all(
            format!(
                "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
                 Authorization: Basic {enc}\r\nContent-Length: {big}\r\n\r\n{{"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");

    // A held lock: Terraform itself is refused with the holder named, and so are other lockers
    // (423 with the holder's lock info) and writers without the lock's ID (409).
    let info = |id: &str| {
        serde_json::json!({"ID": id, "Operation": "OperationTypeApply", "Who": "test@host",
                           "Version": "1.0.3", "Created": "2024-01-01T00:00:00Z", "Path": "", "Info": ""})
        .to_string()
    };
    let locked = http(addr, "LOCK", &path, auth, info("lock-one").as_bytes(), &[]).await;
    assert_eq!(locked.status, 200, "{}", locked.body);
    let held = http(addr, "LOCK", &path, auth, info("lock-two").as_bytes(), &[]).await;
    assert_eq!(held.status, 423);
    let holder: Value = serde_json::from_str(&held.body).unwrap();
    assert_eq!(holder["ID"], "lock-one");
    assert_eq!(holder["Who"], "test@host");
    // The lock records its holder: the run, the worker of its lease, Terraform's Who; the
    // refusal names the run and worker in Terraform's `Info`.
    let worker = f
        .store
        .list_leases()
        .await
        .unwrap()
        .into_iter()
        .find(|l| l.run_id == run.id)
        .expect("the run's lease")
        .worker_id;
    let stored = f
        .store
        .get_state_lock("net", "default")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            stored.holder_run_id.as_str(),
            stored.holder_worker_id.as_str()
        ),
        (run.id.as_str(), worker.as_str())
    );
    assert_eq!(
        holder["Info"],
        format!("held by Cairn run {} on worker {worker}", run.id)
    );
    let blocked = tf
        .run(
            &two,
            &["plan", "-input=false", "-no-color", "-lock-timeout=0s"],
        )
        .await;
    assert_ne!(blocked.code, 0);
    assert!(
        // Terraform 1.0.3's http backend prints only the holder's lock ID from the body.
        blocked.stderr.contains("ID=lock-one"),
        "terraform names the holder:\n{}",
        blocked.stderr
    );
    let mut next: Value = serde_json::from_slice(&v2.body).unwrap();
    next["serial"] = 2.into();
    let next = next.to_string();
    let unlocked_write = http(addr, "POST", &path, auth, next.as_bytes(), &[]).await;
    assert_eq!(unlocked_write.status, 409);
    let wrong_id = http(
        addr,
        "POST",
        &format!("{path}?ID=lock-two"),
        auth,
        next.as_bytes(),
        &[],
    )
    .await;
    assert_eq!(wrong_id.status, 409);
    assert_eq!(current_serial(f.store.as_ref()).await, Some(1));
    let with_id = http(
        addr,
        "POST",
        &format!("{path}?ID=lock-one"),
        auth,
        next.as_bytes(),
        &[],
    )
    .await;
    assert_eq!(with_id.status, 200, "{}", with_id.body);
    assert_eq!(current_serial(f.store.as_ref()).await, Some(2));
    // Unlocking needs the lock's ID.
    let wrong = http(
        addr,
        "UNLOCK",
        &path,
        auth,
        info("lock-two").as_bytes(),
        &[],
    )
    .await;
    assert_eq!(wrong.status, 409);
    assert!(f
        .store
        .get_state_lock("net", "default")
        .await
        .unwrap()
        .is_some());
    let right = http(
        addr,
        "UNLOCK",
        &path,
        auth,
        info("lock-one").as_bytes(),
        &[],
    )
    .await;
    assert_eq!(right.status, 200);
    assert_eq!(
        f.store.get_state_lock("net", "default").await.unwrap(),
        None
    );

    // Bad credentials: none, a wrong password, another run's name with this password.
    assert_eq!(http(addr, "GET", &path, None, b"", &[]).await.status, 401);
    let mut wrong_pw = c.password.clone();
    wrong_pw.replace_range(
        0..2,
        if wrong_pw.starts_with("00") {
            "11"
        } else {
            "00"
        },
    );
    assert_eq!(
        http(addr, "GET", &path, Some((&c.username, &wrong_pw)), b"", &[])
            .await
            .status,
        401
    );
    assert_eq!(
        http(
            addr,
            "GET",
            &path,
            Some(("run:run_other", &c.password)),
            b"",
            &[]
        )
        .await
        .status,
        401
    );
    // The run's credentials reach only its own stack and deployment.
    assert_eq!(
        http(addr, "GET", "/state/net/staging", auth, b"", &[])
            .await
            .status,
        403
    );
    assert_eq!(
        http(addr, "DELETE", &path, auth, b"", &[]).await.status,
        405
    );

    // When the run ends its credentials stop working.
    agent
        .event(
            &lease,
            apb::job_event::Event::Failed(apb::JobFailed {
                reason: "done with the test".into(),
            }),
        )
        .await;
    s.wait_state(&run.id, pb::RunState::Failed).await;
    let mut revoked = 0;
    for _ in 0..500 {
        revoked = http(addr, "GET", &path, auth, b"", &[]).await.status;
        if revoked == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(revoked, 401);
}

#[tokio::test]
async fn proposed_runs_read_but_do_not_lock_or_write() {
    let f = fixture(Duration::from_secs(60)).await;
    let s = &f.server;
    let mut agent = TestAgent::connect(s, 1).await;
    let run = s.trigger("net", pb::RunType::Proposed).await;
    let lease = agent.lease().await;
    assert_eq!(lease.run_id, run.id);
    assert_eq!(
        lease.env.get("CAIRN_STATE_READ_ONLY").map(String::as_str),
        Some("1")
    );
    let c = Creds::of(&lease);
    let auth = Some((c.username.as_str(), c.password.as_str()));
    let path = c.path();
    // No state yet: 204, which Terraform reads as empty.
    assert_eq!(http(s.addr, "GET", &path, auth, b"", &[]).await.status, 204);
    let doc = br#"{"version":4,"serial":1,"lineage":"l","outputs":{},"resources":[]}"#;
    assert_eq!(
        http(s.addr, "POST", &path, auth, doc, &[]).await.status,
        403
    );
    assert_eq!(
        http(s.addr, "LOCK", &path, auth, br#"{"ID":"x"}"#, &[])
            .await
            .status,
        403
    );
    assert_eq!(current_serial(f.store.as_ref()).await, None);
}

#[tokio::test]
async fn a_lock_left_by_a_lost_worker_is_released_when_its_run_fails() {
    let f = fixture(Duration::from_millis(800)).await;
    let s = &f.server;
    let mut agent = TestAgent::connect(s, 1).await;
    let run = s.trigger("net", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    let c = Creds::of(&lease);
    let auth = Some((c.username.as_str(), c.password.as_str()));
    let r = http(
        s.addr,
        "LOCK",
        &c.path(),
        auth,
        br#"{"ID":"orphan","Operation":"OperationTypeApply"}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        f.store
            .get_state_lock("net", "default")
            .await
            .unwrap()
            .map(|l| (l.id, l.holder_run_id)),
        Some(("orphan".to_string(), run.id.clone()))
    );
    // The agent goes silent: the lease expires, the run fails and its lock goes with it.
    s.wait_state(&run.id, pb::RunState::Failed).await;
    let mut lock = f.store.get_state_lock("net", "default").await.unwrap();
    for _ in 0..500 {
        if lock.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        lock = f.store.get_state_lock("net", "default").await.unwrap();
    }
    assert_eq!(lock, None);
    assert_eq!(
        http(s.addr, "GET", &c.path(), auth, b"", &[]).await.status,
        401
    );
}

#[tokio::test]
async fn stacks_can_keep_their_own_backend() {
    let f = fixture(Duration::from_secs(60)).await;
    let s = &f.server;
    s.stacks(&s.admin)
        .set_env_var(pb::SetEnvVarRequest {
            stack_id: "net".into(),
            var: Some(pb::EnvVar {
                name: "CAIRN_MANAGED_STATE".into(),
                value: "false".into(),
                secret: false,
            }),
        })
        .await
        .unwrap();
    let mut agent = TestAgent::connect(s, 1).await;
    s.trigger("net", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    let names: HashMap<_, _> = lease.env.iter().collect();
    assert!(!names.keys().any(|k| k.starts_with("CAIRN_STATE_")));
}

fn encrypt(key: &[u8], plain: &[u8]) -> Vec<u8> {
    use aes_gcm::aead::{Aead, KeyInit};
    use aes_gcm::{Aes256Gcm, Key, Nonce};
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key));
    let nonce = [9u8; 12];
    let mut out = nonce.to_vec();
    out.extend(cipher.encrypt(Nonce::from_slice(&nonce), plain).unwrap());
    out
}

/// Credentials work only while the run holds a lease: not while it waits for confirmation,
/// again during its apply lease (Terraform applies a saved plan with the planning lease's
/// password, recorded in the plan), and never after its last lease.
#[tokio::test]
async fn credentials_work_only_while_the_run_holds_a_lease() {
    let f = fixture(Duration::from_secs(60)).await;
    let s = &f.server;
    let mut agent = TestAgent::connect(s, 1).await;
    let run = s.trigger("net", pb::RunType::Tracked).await;
    let plan_lease = agent.lease().await;
    let plan = Creds::of(&plan_lease);
    let plan_auth = Some((plan.username.as_str(), plan.password.as_str()));
    let get = |auth: Option<(&str, &str)>| {
        let path = plan.path();
        let auth = auth.map(|(u, p)| (u.to_string(), p.to_string()));
        async move {
            let auth = auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
            http(s.addr, "GET", &path, auth, b"", &[]).await
        }
    };
    assert_eq!(get(plan_auth).await.status, 204);

    // The plan ends (workspace stored): the run waits for confirmation without a lease.
    agent.plan_through(&plan_lease, &["cairntest_file.a"]).await;
    let stored = agent
        .upload(
            &plan_lease,
            &encrypt(&plan_lease.workspace_key, b"workspace"),
        )
        .await
        .unwrap();
    agent
        .event(
            &plan_lease,
            apb::job_event::Event::WorkspaceStored(apb::WorkspaceStored {
                artifact_id: stored.artifact_id,
                sha256: stored.sha256,
            }),
        )
        .await;
    s.wait_state(&run.id, pb::RunState::Unconfirmed).await;
    let refused = get(plan_auth).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(refused.body.contains("expired"), "{}", refused.body);

    // The apply lease: its own password works, and so does the plan's again.
    s.runs(&s.admin)
        .confirm_run(pb::ConfirmRunRequest {
            run_id: run.id.clone(),
        })
        .await
        .unwrap();
    let apply_lease = agent.lease().await;
    assert_eq!(apply_lease.kind(), apb::JobKind::Apply);
    let apply = Creds::of(&apply_lease);
    assert_ne!(apply.password, plan.password);
    let apply_auth = Some((apply.username.as_str(), apply.password.as_str()));
    assert_eq!(get(apply_auth).await.status, 204);
    assert_eq!(get(plan_auth).await.status, 204);

    // The run ends: neither works any more.
    agent.apply_ok(&apply_lease).await;
    s.wait_state(&run.id, pb::RunState::Finished).await;
    let mut statuses = (0, 0);
    for _ in 0..500 {
        statuses = (get(plan_auth).await.status, get(apply_auth).await.status);
        if statuses == (401, 401) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(statuses, (401, 401));
}

/// A real Terraform apply that hangs while it holds the state lock (its resource writes into a
/// FIFO nobody reads) on a worker that goes silent: the lease expires, the run fails, the lock
/// is released and names no one any more, and when Terraform finally tries to save, its
/// credentials are refused, so nothing from the lost worker reaches the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_holding_the_lock_loses_it_when_its_worker_is_lost() {
    let f = fixture(Duration::from_secs(3)).await;
    let s = &f.server;
    let mut agent = TestAgent::connect(s, 1).await;
    let run = s.trigger("net", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    let c = Creds::of(&lease);

    let work = tempfile::tempdir().unwrap();
    let fifo = work.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let dir = work.path().join("project");
    write_project(&dir, &fifo, "v1");

    // The worker is alive (heartbeats) while Terraform initializes and takes the lock.
    let apply = {
        let (dir, c) = (dir.clone(), Creds { ..c });
        tokio::spawn(async move {
            let tf = Tf::new();
            tf.init(&dir, &c).await;
            tf.run(
                &dir,
                &["apply", "-auto-approve", "-input=false", "-no-color"],
            )
            .await
        })
    };
    let mut held = None;
    for _ in 0..3000 {
        held = f.store.get_state_lock("net", "default").await.unwrap();
        if held.is_some() || apply.is_finished() {
            break;
        }
        agent.heartbeat(vec![lease.lease_id.clone()]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = held.expect("terraform took the state lock");
    assert_eq!(held.holder_run_id, run.id);
    assert_eq!(held.holder_worker_id, agent.worker_id);
    let info: Value = serde_json::from_str(&held.info_json).unwrap();
    assert_eq!(info["Operation"], "OperationTypeApply");

    // The worker goes silent.
    s.wait_state(&run.id, pb::RunState::Failed).await;
    let mut lock = f.store.get_state_lock("net", "default").await.unwrap();
    for _ in 0..500 {
        if lock.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        lock = f.store.get_state_lock("net", "default").await.unwrap();
    }
    assert_eq!(lock, None, "the lost worker's lock is released");

    // Unblock Terraform: it creates the file, then cannot save its state.
    let reader = tokio::task::spawn_blocking(move || std::fs::read_to_string(&fifo).unwrap());
    let out = apply.await.unwrap();
    assert_eq!(reader.await.unwrap(), "v1");
    assert_ne!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("Failed to save state") || out.stderr.contains("401"),
        "{}",
        out.stderr
    );
    assert_eq!(current_serial(f.store.as_ref()).await, None);
}
