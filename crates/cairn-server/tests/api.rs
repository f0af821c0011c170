//! Stack and run RPCs against a real server, including every bad-input case; each failing call
//! is checked to leave what is stored unchanged.

mod common;

use std::process::Command;

use cairn_proto::v1 as pb;
use common::*;
use tonic::Code;

fn assert_invalid<T: std::fmt::Debug>(r: Result<T, tonic::Status>, field: &str) {
    let s = r.expect_err("expected INVALID_ARGUMENT");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(
        s.message().contains(field),
        "message {:?} should name {field}",
        s.message()
    );
}

async fn all_stacks(s: &TestServer) -> Vec<pb::Stack> {
    s.stacks(&s.admin)
        .list_stacks(pb::ListStacksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .stacks
}

#[tokio::test]
async fn first_start_writes_owner_only_secrets_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), std::time::Duration::from_secs(30));
    let server = cairn_server::Server::builder(cfg.clone())
        .build()
        .await
        .unwrap();
    for f in ["admin.key", "default-pool.token", "master.key"] {
        let mode = std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let admin = std::fs::read_to_string(dir.path().join("admin.key")).unwrap();
    let store = server.store();
    assert_eq!(store.list_api_keys().await.unwrap().len(), 1);
    drop(server);
    drop(store);
    // A second start on the same data keeps the key and writes nothing new.
    let again = cairn_server::Server::builder(cfg).build().await.unwrap();
    assert_eq!(again.store().list_api_keys().await.unwrap().len(), 1);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("admin.key")).unwrap(),
        admin
    );
}

#[tokio::test]
async fn whoami_and_version() {
    let s = TestServer::start().await;
    let me = s
        .system(Some(&s.admin))
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.login, "admin");
    assert_eq!(me.role, pb::Role::Admin as i32);
    let v = s
        .system(Some(&s.admin))
        .get_version(pb::GetVersionRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.api_version, 1);
    let reader = s.key("rita", pb::Role::Reader).await;
    let me = s
        .system(Some(&reader))
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (me.login.as_str(), me.role),
        ("rita", pb::Role::Reader as i32)
    );
    // A revoked key stops working at once.
    let keys = s
        .system(Some(&s.admin))
        .list_api_keys(pb::ListApiKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    let rita = keys.iter().find(|k| k.login == "rita").unwrap();
    s.system(Some(&s.admin))
        .revoke_api_key(pb::RevokeApiKeyRequest {
            key_id: rita.id.clone(),
        })
        .await
        .unwrap();
    let r = s.system(Some(&reader)).who_am_i(pb::WhoAmIRequest {}).await;
    assert_eq!(code(r), Code::Unauthenticated);
    // Plain HTTP on the same port.
    let body = http_get(s.addr, "/healthz").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.ends_with("ok\n"), "{body}");
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn stack_crud_and_every_bad_input_changes_nothing() {
    let s = TestServer::start().await;
    let mut c = s.stacks(&s.admin);
    let created = c
        .create_stack(pb::CreateStackRequest {
            stack: Some(stack_input("net", false)),
            env: vec![pb::EnvVar {
                name: "TF_VAR_region".into(),
                value: "eu-west-1".into(),
                secret: false,
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .stack
        .unwrap();
    assert_eq!(created.version, 1);
    assert_eq!(created.state, "NONE");
    assert_eq!(created.worker_pool.as_ref().unwrap().id, "default");
    let before = all_stacks(&s).await;

    let bad = |f: &dyn Fn(&mut pb::Stack)| {
        let mut st = stack_input("other", false);
        f(&mut st);
        pb::CreateStackRequest {
            stack: Some(st),
            env: vec![],
        }
    };
    assert_invalid(
        c.create_stack(bad(&|x| x.branch = String::new())).await,
        "stack.branch",
    );
    assert_invalid(
        c.create_stack(bad(&|x| x.id = "Not A Slug".into())).await,
        "stack.id",
    );
    assert_invalid(
        c.create_stack(bad(&|x| x.name = "n".repeat(300))).await,
        "stack.name",
    );
    assert_invalid(
        c.create_stack(bad(&|x| x.description = "d".repeat(5000)))
            .await,
        "stack.description",
    );
    assert_invalid(
        c.create_stack(bad(&|x| x.project_root = "../escape".into()))
            .await,
        "stack.project_root",
    );
    assert_invalid(
        c.create_stack(bad(&|x| {
            x.worker_pool = Some(pb::WorkerPoolRef {
                id: "no-such-pool".into(),
                ..Default::default()
            })
        }))
        .await,
        "stack.worker_pool.id",
    );
    assert_invalid(
        c.create_stack(pb::CreateStackRequest {
            stack: Some(stack_input("other", false)),
            env: vec![pb::EnvVar {
                name: "1BAD".into(),
                value: String::new(),
                secret: false,
            }],
        })
        .await,
        "env[0].name",
    );
    assert_invalid(
        c.create_stack(pb::CreateStackRequest {
            stack: None,
            env: vec![],
        })
        .await,
        "stack",
    );
    assert_eq!(
        code(
            c.create_stack(pb::CreateStackRequest {
                stack: Some(stack_input("net", false)),
                env: vec![],
            })
            .await
        ),
        Code::AlreadyExists
    );
    assert_eq!(
        code(
            c.get_stack(pb::GetStackRequest {
                stack_id: "nope".into()
            })
            .await
        ),
        Code::NotFound
    );
    assert_invalid(
        c.get_stack(pb::GetStackRequest {
            stack_id: "Bad/Id".into(),
        })
        .await,
        "stack_id",
    );
    assert_invalid(
        c.list_stacks(pb::ListStacksRequest {
            page: Some(pb::PageRequest {
                page_size: 100000,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await,
        "page.page_size",
    );
    // Update: stale version → ABORTED, bad field → INVALID_ARGUMENT, unknown → NOT_FOUND.
    let mut upd = created.clone();
    upd.version = 99;
    upd.name = "Renamed".into();
    assert_eq!(
        code(
            c.update_stack(pb::UpdateStackRequest {
                stack: Some(upd.clone())
            })
            .await
        ),
        Code::Aborted
    );
    upd.version = created.version;
    upd.branch = String::new();
    assert_invalid(
        c.update_stack(pb::UpdateStackRequest {
            stack: Some(upd.clone()),
        })
        .await,
        "stack.branch",
    );
    let mut ghost = stack_input("ghost", false);
    ghost.version = 1;
    assert_eq!(
        code(
            c.update_stack(pb::UpdateStackRequest { stack: Some(ghost) })
                .await
        ),
        Code::NotFound
    );
    // Environment variables.
    let var = |name: &str, value: String| pb::SetEnvVarRequest {
        stack_id: "net".into(),
        var: Some(pb::EnvVar {
            name: name.into(),
            value,
            secret: false,
        }),
    };
    assert_invalid(c.set_env_var(var("A-B", "x".into())).await, "var.name");
    assert_invalid(
        c.set_env_var(var("BIG", "x".repeat(70 * 1024))).await,
        "var.value",
    );
    let mut unknown = var("OK", "x".into());
    unknown.stack_id = "nope".into();
    assert_eq!(code(c.set_env_var(unknown).await), Code::NotFound);
    // Sync with a malformed commit.
    assert_invalid(
        c.sync_stack(pb::SyncStackRequest {
            stack_id: "net".into(),
            commit: Some(pb::Commit {
                hash: "not-a-sha".into(),
                ..Default::default()
            }),
        })
        .await,
        "commit.hash",
    );

    assert_eq!(
        all_stacks(&s).await,
        before,
        "a failed call changed a stack"
    );
    let vars = c
        .list_env_vars(pb::ListEnvVarsRequest {
            stack_id: "net".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .vars;
    assert_eq!(vars.len(), 1);

    // A good update bumps the version and keeps server-owned fields.
    upd.branch = "main".into();
    let updated = c
        .update_stack(pb::UpdateStackRequest { stack: Some(upd) })
        .await
        .unwrap()
        .into_inner()
        .stack
        .unwrap();
    assert_eq!(updated.name, "Renamed");
    assert_eq!(updated.version, created.version + 1);
    // Delete, then it is gone.
    c.delete_stack(pb::DeleteStackRequest {
        stack_id: "net".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        code(
            c.get_stack(pb::GetStackRequest {
                stack_id: "net".into()
            })
            .await
        ),
        Code::NotFound
    );
}

#[tokio::test]
async fn secret_values_are_write_only() {
    let s = TestServer::start().await;
    s.stack("app", false, SHA_A).await;
    let mut c = s.stacks(&s.admin);
    let echoed = c
        .set_env_var(pb::SetEnvVarRequest {
            stack_id: "app".into(),
            var: Some(pb::EnvVar {
                name: "DB_PASSWORD".into(),
                value: "hunter2-secret".into(),
                secret: true,
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .var
        .unwrap();
    assert_eq!(echoed.value, "");
    assert!(echoed.secret);
    c.set_env_var(pb::SetEnvVarRequest {
        stack_id: "app".into(),
        var: Some(pb::EnvVar {
            name: "REGION".into(),
            value: "eu".into(),
            secret: false,
        }),
    })
    .await
    .unwrap();
    let vars = c
        .list_env_vars(pb::ListEnvVarsRequest {
            stack_id: "app".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .vars;
    let get = |n: &str| vars.iter().find(|v| v.name == n).unwrap().clone();
    assert_eq!(get("DB_PASSWORD").value, "");
    assert_eq!(get("REGION").value, "eu");
    c.delete_env_var(pb::DeleteEnvVarRequest {
        stack_id: "app".into(),
        name: "REGION".into(),
    })
    .await
    .unwrap();
    let n = c
        .list_env_vars(pb::ListEnvVarsRequest {
            stack_id: "app".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .vars
        .len();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn lock_owner_semantics_and_admin_force() {
    let s = TestServer::start().await;
    s.stack("app", false, SHA_A).await;
    let alice = s.key("alice", pb::Role::Writer).await;
    let bob = s.key("bob", pb::Role::Writer).await;
    let locked = s
        .stacks(&alice)
        .lock_stack(pb::LockStackRequest {
            stack_id: "app".into(),
            note: "maintenance".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .stack
        .unwrap();
    assert_eq!(locked.locked_by, "alice");
    // Locking again as the owner changes nothing.
    let again = s
        .stacks(&alice)
        .lock_stack(pb::LockStackRequest {
            stack_id: "app".into(),
            note: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .stack
        .unwrap();
    assert_eq!(again.version, locked.version);
    let mut b = s.stacks(&bob);
    let r = b
        .lock_stack(pb::LockStackRequest {
            stack_id: "app".into(),
            note: String::new(),
        })
        .await;
    assert_eq!(code(r), Code::FailedPrecondition);
    let r = b
        .unlock_stack(pb::UnlockStackRequest {
            stack_id: "app".into(),
            force: false,
        })
        .await;
    assert_eq!(code(r), Code::FailedPrecondition);
    let r = b
        .unlock_stack(pb::UnlockStackRequest {
            stack_id: "app".into(),
            force: true,
        })
        .await;
    assert_eq!(code(r), Code::PermissionDenied);
    // Someone else cannot trigger runs on a locked stack.
    let r = s
        .runs(&bob)
        .trigger_run(pb::TriggerRunRequest {
            stack_id: "app".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(r), Code::FailedPrecondition);
    let r = s
        .runs(&alice)
        .trigger_run(pb::TriggerRunRequest {
            stack_id: "app".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(r.triggered_by, "user:alice");
    let st = s
        .stacks(&s.admin)
        .get_stack(pb::GetStackRequest {
            stack_id: "app".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .stack
        .unwrap();
    assert_eq!(st.locked_by, "alice");
    let unlocked = s
        .stacks(&s.admin)
        .unlock_stack(pb::UnlockStackRequest {
            stack_id: "app".into(),
            force: true,
        })
        .await
        .unwrap()
        .into_inner()
        .stack
        .unwrap();
    assert_eq!(unlocked.locked_by, "");
}

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn sync_stack_asks_git_for_the_branch_head() {
    let s = TestServer::start().await;
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q", "-b", "main"]);
    std::fs::write(repo.path().join("main.tf"), "# one\n").unwrap();
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "one"]);
    let head = git(repo.path(), &["rev-parse", "HEAD"]);
    let mut st = stack_input("gitstack", false);
    st.repository = repo.path().display().to_string();
    let mut c = s.stacks(&s.admin);
    c.create_stack(pb::CreateStackRequest {
        stack: Some(st.clone()),
        env: vec![],
    })
    .await
    .unwrap();
    let synced = c
        .sync_stack(pb::SyncStackRequest {
            stack_id: "gitstack".into(),
            commit: None,
        })
        .await
        .unwrap()
        .into_inner()
        .stack
        .unwrap();
    let tracked = synced.tracked_commit.unwrap();
    assert_eq!(tracked.hash, head);
    assert_eq!(tracked.branch, "main");
    // A new commit moves the head on the next sync, and runs default to it.
    std::fs::write(repo.path().join("main.tf"), "# two\n").unwrap();
    git(repo.path(), &["commit", "-q", "-am", "two"]);
    let head2 = git(repo.path(), &["rev-parse", "HEAD"]);
    c.sync_stack(pb::SyncStackRequest {
        stack_id: "gitstack".into(),
        commit: None,
    })
    .await
    .unwrap();
    let run = s.trigger("gitstack", pb::RunType::Tracked).await;
    assert_eq!(run.commit.unwrap().hash, head2);
    // A branch that does not exist is a precondition failure and changes nothing.
    st.branch = "nope".into();
    c.update_stack(pb::UpdateStackRequest { stack: Some(st) })
        .await
        .unwrap();
    let before = all_stacks(&s).await;
    let r = c
        .sync_stack(pb::SyncStackRequest {
            stack_id: "gitstack".into(),
            commit: None,
        })
        .await;
    assert_eq!(code(r), Code::FailedPrecondition);
    assert_eq!(all_stacks(&s).await, before);
}

#[tokio::test]
async fn run_rpcs_and_every_bad_input_changes_nothing() {
    let s = TestServer::start().await;
    let mut sc = s.stacks(&s.admin);
    sc.create_stack(pb::CreateStackRequest {
        stack: Some(stack_input("bare", false)),
        env: vec![],
    })
    .await
    .unwrap();
    let mut rc = s.runs(&s.admin);
    // No tracked commit yet and none given.
    let r = rc
        .trigger_run(pb::TriggerRunRequest {
            stack_id: "bare".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(r), Code::FailedPrecondition);
    s.stack("app", false, SHA_A).await;

    let r1 = s.trigger("app", pb::RunType::Tracked).await;
    assert_eq!(r1.state, pb::RunState::Queued as i32);
    assert_eq!(r1.triggered_by, "user:admin");
    assert_eq!(r1.creator_session.as_ref().unwrap().login, "admin");
    assert!(r1.creator_session.as_ref().unwrap().admin);
    assert_eq!(r1.commit.as_ref().unwrap().hash, SHA_A);
    assert_eq!(r1.deployment, "default");
    let r2 = rc
        .trigger_run(pb::TriggerRunRequest {
            stack_id: "app".into(),
            r#type: pb::RunType::Proposed as i32,
            commit_sha: SHA_B.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(r2.commit.as_ref().unwrap().hash, SHA_B);
    let r3 = s.trigger("app", pb::RunType::Task).await;

    let list = |size: i32, token: String| pb::ListRunsRequest {
        stack_id: "app".into(),
        page: Some(pb::PageRequest {
            page_size: size,
            page_token: token,
        }),
    };
    let p1 = rc
        .list_runs(list(2, String::new()))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = p1.runs.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids, vec![r3.id.clone(), r2.id.clone()], "newest first");
    assert!(!p1.next_page_token.is_empty());
    let p2 = rc
        .list_runs(list(2, p1.next_page_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p2.runs.len(), 1);
    assert_eq!(p2.runs[0].id, r1.id);

    let snapshot = |rc: &mut RunServiceClientA| {
        let mut rc = rc.clone();
        async move {
            rc.list_runs(pb::ListRunsRequest {
                stack_id: "app".into(),
                page: None,
            })
            .await
            .unwrap()
            .into_inner()
            .runs
        }
    };
    let before = snapshot(&mut rc).await;

    let trig = |f: &dyn Fn(&mut pb::TriggerRunRequest)| {
        let mut t = pb::TriggerRunRequest {
            stack_id: "app".into(),
            ..Default::default()
        };
        f(&mut t);
        t
    };
    assert_eq!(
        code(
            rc.trigger_run(trig(&|t| t.stack_id = "unknown".into()))
                .await
        ),
        Code::NotFound
    );
    assert_invalid(
        rc.trigger_run(trig(&|t| t.stack_id = "BAD ID".into()))
            .await,
        "stack_id",
    );
    assert_invalid(
        rc.trigger_run(trig(&|t| t.commit_sha = "xyz".into())).await,
        "commit_sha",
    );
    assert_invalid(
        rc.trigger_run(trig(&|t| t.r#type = pb::RunType::DriftDetection as i32))
            .await,
        "type",
    );
    assert_invalid(rc.trigger_run(trig(&|t| t.mode = 42)).await, "mode");
    assert_invalid(
        rc.trigger_run(trig(&|t| t.deployment = "Not Slug".into()))
            .await,
        "deployment",
    );
    assert_invalid(
        rc.get_run(pb::GetRunRequest {
            run_id: "123".into(),
        })
        .await,
        "run_id",
    );
    let unknown_run = "0".repeat(32);
    assert_eq!(
        code(
            rc.get_run(pb::GetRunRequest {
                run_id: unknown_run.clone()
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            rc.list_runs(pb::ListRunsRequest {
                stack_id: "unknown".into(),
                page: None
            })
            .await
        ),
        Code::NotFound
    );
    // Illegal transitions: QUEUED cannot be confirmed, discarded, stopped or replanned.
    assert_eq!(
        code(
            rc.confirm_run(pb::ConfirmRunRequest {
                run_id: r1.id.clone()
            })
            .await
        ),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(
            rc.discard_run(pb::DiscardRunRequest {
                run_id: r1.id.clone()
            })
            .await
        ),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(
            rc.stop_run(pb::StopRunRequest {
                run_id: r1.id.clone()
            })
            .await
        ),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(
            rc.replan_run(pb::ReplanRunRequest {
                run_id: r1.id.clone(),
                targets: vec!["aws_s3_bucket.a".into()]
            })
            .await
        ),
        Code::FailedPrecondition
    );
    assert_invalid(
        rc.replan_run(pb::ReplanRunRequest {
            run_id: r1.id.clone(),
            targets: vec![],
        })
        .await,
        "targets",
    );
    assert_invalid(
        rc.confirm_run(pb::ConfirmRunRequest {
            run_id: "UPPERCASE".into(),
        })
        .await,
        "run_id",
    );
    assert_eq!(
        code(
            rc.cancel_run(pb::CancelRunRequest {
                run_id: unknown_run
            })
            .await
        ),
        Code::NotFound
    );
    assert_invalid(
        rc.review_run(pb::ReviewRunRequest {
            run_id: r1.id.clone(),
            approve: true,
            note: "n".repeat(5000),
        })
        .await,
        "note",
    );
    assert_invalid(
        rc.get_run_logs(pb::GetRunLogsRequest {
            run_id: r1.id.clone(),
            after_seq: 0,
            limit: -1,
        })
        .await,
        "limit",
    );
    // Deleting a stack with active runs is refused.
    assert_eq!(
        code(
            sc.delete_stack(pb::DeleteStackRequest {
                stack_id: "app".into()
            })
            .await
        ),
        Code::FailedPrecondition
    );
    assert_eq!(
        snapshot(&mut rc).await,
        before,
        "a failed call changed a run"
    );

    // Reviews are recorded, newest per reviewer.
    let reviewed = rc
        .review_run(pb::ReviewRunRequest {
            run_id: r1.id.clone(),
            approve: false,
            note: "not yet".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(reviewed.reviews.len(), 1);
    assert!(!reviewed.reviews[0].approve);

    // Cancel every queued run; a second cancel is illegal; then the stack can go.
    for id in [&r1.id, &r2.id, &r3.id] {
        let run = rc
            .cancel_run(pb::CancelRunRequest { run_id: id.clone() })
            .await
            .unwrap()
            .into_inner()
            .run
            .unwrap();
        assert_eq!(run.state, pb::RunState::Canceled as i32);
        let h: Vec<_> = run.states_history.iter().map(|t| t.state).collect();
        assert_eq!(
            h,
            vec![pb::RunState::Queued as i32, pb::RunState::Canceled as i32]
        );
    }
    let again = rc
        .cancel_run(pb::CancelRunRequest {
            run_id: r1.id.clone(),
        })
        .await;
    assert_eq!(code(again), Code::FailedPrecondition);
    sc.delete_stack(pb::DeleteStackRequest {
        stack_id: "app".into(),
    })
    .await
    .unwrap();
}

type RunServiceClientA = cairn_proto::v1::run_service_client::RunServiceClient<Authed>;

#[tokio::test]
async fn unknown_database_schemes_are_refused_without_echoing_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), std::time::Duration::from_secs(30));
    cfg.database_url = "mysql://root:hunter2@db/cairn".into();
    let err = cairn_server::open_store(&cfg).await.err().unwrap();
    let msg = err.to_string();
    assert!(msg.contains("mysql"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
    // `sqlite:<path>` opens that file.
    cfg.database_url = format!("sqlite:{}", dir.path().join("other.db").display());
    cairn_server::open_store(&cfg).await.unwrap();
    assert!(dir.path().join("other.db").exists());
}
