//! VCS integrations, webhooks and the plain-Git poller against a real server: real octokit
//! payloads signed as GitHub signs them, real git repositories and `git push`, and a real
//! `cairn server` process killed right after acknowledging a delivery.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cairn_proto::v1 as pb;
use cairn_proto::v1::vcs_service_client::VcsServiceClient;
use common::{Authed, Bearer, TestServer};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::service::interceptor::InterceptedService;

const SECRET: &str = "It's a Secret to Everybody";

fn examples_index() -> Value {
    let tools = std::env::var_os("CAIRN_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools"));
    let path = tools.join("node/node_modules/@octokit/webhooks-examples/api.github.com/index.json");
    let text = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: run `cargo xtask provision` (it installs @octokit/webhooks-examples)",
            path.display()
        )
    });
    serde_json::from_slice(&text).unwrap()
}

/// The first example of `event` for which `pick` holds.
fn example(event: &str, pick: impl Fn(&Value) -> bool) -> Value {
    let index = examples_index();
    index
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == event)
        .and_then(|e| e["examples"].as_array().unwrap().iter().find(|x| pick(x)))
        .cloned()
        .unwrap_or_else(|| panic!("no {event} example"))
}

fn master_push() -> Value {
    example("push", |x| {
        x["ref"] == "refs/heads/master" && x["commits"].as_array().is_some_and(|c| !c.is_empty())
    })
}

/// A POST over a plain TCP connection: (status, body).
async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    // The server may answer (413) and close before reading a large body.
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    (status, body.unwrap_or_default())
}

fn github_headers(event: &str, delivery: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("X-GitHub-Event", event.to_string()),
        ("X-GitHub-Delivery", delivery.to_string()),
        (
            "X-Hub-Signature-256",
            cairn_vcs::github_signature(SECRET.as_bytes(), body),
        ),
    ]
}

fn vcs(server: &TestServer) -> VcsServiceClient<Authed> {
    VcsServiceClient::new(InterceptedService::new(
        server.channel.clone(),
        Bearer(Some(server.admin.clone())),
    ))
}

async fn integration(server: &TestServer, id: &str, provider: pb::VcsProvider) -> pb::Integration {
    vcs(server)
        .create_integration(pb::CreateIntegrationRequest {
            integration: Some(pb::Integration {
                id: id.into(),
                provider: provider as i32,
                webhook_secret: SECRET.into(),
                token: "ghp_not_returned".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .integration
        .unwrap()
}

async fn stack(
    server: &TestServer,
    id: &str,
    repository: &str,
    branch: &str,
    root: &str,
    vcs: &str,
) {
    server
        .stacks(&server.admin)
        .create_stack(pb::CreateStackRequest {
            stack: Some(pb::Stack {
                id: id.into(),
                name: id.into(),
                repository: repository.into(),
                branch: branch.into(),
                project_root: root.into(),
                vendor: "terraform".into(),
                vcs_integration_id: vcs.into(),
                ..Default::default()
            }),
            env: vec![],
        })
        .await
        .unwrap();
}

async fn runs(server: &TestServer, stack_id: &str) -> Vec<pb::Run> {
    server
        .runs(&server.admin)
        .list_runs(pb::ListRunsRequest {
            stack_id: stack_id.into(),
            page: None,
        })
        .await
        .unwrap()
        .into_inner()
        .runs
}

/// Waits until every stored event is processed.
async fn settled(server: &TestServer) {
    for _ in 0..3000 {
        if server
            .state
            .store
            .unprocessed_vcs_events()
            .await
            .unwrap()
            .is_empty()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("VCS events never processed");
}

async fn wait_runs(server: &TestServer, stack_id: &str, n: usize) -> Vec<pb::Run> {
    for _ in 0..3000 {
        let r = runs(server, stack_id).await;
        if r.len() >= n {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("stack {stack_id} never got {n} runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrations_keep_their_secrets() {
    let server = TestServer::start().await;
    let created = integration(&server, "gh", pb::VcsProvider::Github).await;
    assert_eq!(created.provider, pb::VcsProvider::Github as i32);
    assert!(created.webhook_secret.is_empty() && created.token.is_empty());
    let listed = vcs(&server)
        .list_integrations(pb::ListIntegrationsRequest {})
        .await
        .unwrap()
        .into_inner()
        .integrations;
    assert_eq!(listed.len(), 1);
    assert!(listed[0].webhook_secret.is_empty() && listed[0].token.is_empty());
    // Sealed at rest: the stored bytes are not the secret.
    let stored = server.state.store.get_vcs_integration("gh").await.unwrap();
    assert!(!stored.webhook_secret.is_empty());
    assert!(!stored
        .webhook_secret
        .windows(SECRET.len())
        .any(|w| w == SECRET.as_bytes()));
    // GitHub integrations need a secret; readers cannot create.
    let err = vcs(&server)
        .create_integration(pb::CreateIntegrationRequest {
            integration: Some(pb::Integration {
                provider: pb::VcsProvider::Github as i32,
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let reader = server.key("rita", pb::Role::Reader).await;
    let mut as_reader = VcsServiceClient::new(InterceptedService::new(
        server.channel.clone(),
        Bearer(Some(reader)),
    ));
    let err = as_reader
        .create_integration(pb::CreateIntegrationRequest {
            integration: Some(pb::Integration {
                provider: pb::VcsProvider::Git as i32,
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_octokit_push_creates_runs_for_matching_stacks() {
    let server = TestServer::start().await;
    integration(&server, "gh", pb::VcsProvider::Github).await;
    // Three spellings of the payload's repository, one other repository, one unaffected root.
    stack(
        &server,
        "by-name",
        "Codertocat/Hello-World",
        "master",
        "",
        "",
    )
    .await;
    stack(
        &server,
        "by-url",
        "https://github.com/Codertocat/Hello-World",
        "dev",
        "",
        "gh",
    )
    .await;
    stack(
        &server,
        "by-ssh",
        "git@github.com:Codertocat/Hello-World.git",
        "master",
        "",
        "",
    )
    .await;
    stack(&server, "other-repo", "Codertocat/Other", "master", "", "").await;
    stack(
        &server,
        "other-root",
        "Codertocat/Hello-World",
        "master",
        "network",
        "",
    )
    .await;
    stack(
        &server,
        "other-vcs",
        "Codertocat/Hello-World",
        "master",
        "",
        "gl",
    )
    .await;

    let ping = example("ping", |x| x["repository"].is_object());
    let body = serde_json::to_vec(&ping).unwrap();
    let (status, text) = post(
        server.addr,
        "/webhooks/github/gh",
        &github_headers("ping", "p-1", &body),
        &body,
    )
    .await;
    assert_eq!(status, 200, "{text}");

    let body = serde_json::to_vec(&master_push()).unwrap();
    let (status, text) = post(
        server.addr,
        "/webhooks/github/gh",
        &github_headers("push", "d-1", &body),
        &body,
    )
    .await;
    assert_eq!(status, 202, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["status"], "accepted");
    settled(&server).await;

    let tracked = wait_runs(&server, "by-name", 1).await;
    assert_eq!(tracked.len(), 1);
    assert_eq!(tracked[0].r#type, pb::RunType::Tracked as i32);
    let commit = tracked[0].commit.clone().unwrap();
    assert_eq!(commit.hash, "6113728f27ae82c7b1a177c8d03f9e96e0adf246");
    assert_eq!(commit.branch, "master");
    assert_eq!(commit.message, "Initial commit");
    // Tracked runs move the head commit.
    let s = server.state.store.get_stack("by-name").await.unwrap();
    assert_eq!(
        s.tracked_commit.map(|c| c.hash).as_deref(),
        Some("6113728f27ae82c7b1a177c8d03f9e96e0adf246")
    );
    // Not the tracked branch: a proposed run.
    let proposed = runs(&server, "by-url").await;
    assert_eq!(proposed.len(), 1);
    assert_eq!(proposed[0].r#type, pb::RunType::Proposed as i32);
    assert_eq!(runs(&server, "by-ssh").await.len(), 1);
    assert!(runs(&server, "other-repo").await.is_empty());
    assert!(runs(&server, "other-root").await.is_empty());
    assert!(runs(&server, "other-vcs").await.is_empty());

    // The same delivery again: 200 duplicate, nothing new.
    let (status, text) = post(
        server.addr,
        "/webhooks/github/gh",
        &github_headers("push", "d-1", &body),
        &body,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["status"], "duplicate");
    // A redelivery under a new id is stored but the (stack, sha, type) dedup creates nothing.
    let (status, _) = post(
        server.addr,
        "/webhooks/github/gh",
        &github_headers("push", "d-2", &body),
        &body,
    )
    .await;
    assert_eq!(status, 202);
    settled(&server).await;
    assert_eq!(runs(&server, "by-name").await.len(), 1);
    assert_eq!(runs(&server, "by-url").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deliveries_are_refused_and_store_nothing() {
    let server = TestServer::start_configured(Duration::from_secs(30), None, |c| {
        c.webhook_max_bytes = 64 * 1024;
    })
    .await;
    integration(&server, "gh", pb::VcsProvider::Github).await;
    integration(&server, "gl", pb::VcsProvider::Gitlab).await;
    stack(&server, "s", "Codertocat/Hello-World", "master", "", "").await;
    let body = serde_json::to_vec(&master_push()).unwrap();
    let url = "/webhooks/github/gh";

    let mut wrong = github_headers("push", "x-1", &body);
    wrong[2].1 = cairn_vcs::github_signature(b"another secret", &body);
    assert_eq!(post(server.addr, url, &wrong, &body).await.0, 401);
    let missing = &github_headers("push", "x-2", &body)[..2];
    assert_eq!(post(server.addr, url, missing, &body).await.0, 401);
    // Signed, but not the signed body.
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    assert_eq!(
        post(
            server.addr,
            url,
            &github_headers("push", "x-3", &body),
            &tampered
        )
        .await
        .0,
        401
    );

    let malformed = b"{\"ref\": ".to_vec();
    let (status, text) = post(
        server.addr,
        url,
        &github_headers("push", "x-4", &malformed),
        &malformed,
    )
    .await;
    assert_eq!(status, 400, "{text}");
    let (status, text) = post(
        server.addr,
        url,
        &github_headers("deployment", "x-5", &body),
        &body,
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("deployment"), "{text}");

    let big = vec![b' '; 65 * 1024];
    assert_eq!(
        post(server.addr, url, &github_headers("push", "x-6", &big), &big)
            .await
            .0,
        413
    );

    let headers = github_headers("push", "x-7", &body);
    assert_eq!(
        post(server.addr, "/webhooks/github/nope", &headers, &body)
            .await
            .0,
        404
    );
    // A GitLab integration behind the GitHub route is not found either.
    assert_eq!(
        post(server.addr, "/webhooks/github/gl", &headers, &body)
            .await
            .0,
        404
    );
    // GitLab: the token header must match the secret.
    let gl = [
        ("X-Gitlab-Event", "Push Hook".to_string()),
        ("X-Gitlab-Token", "wrong".to_string()),
    ];
    assert_eq!(
        post(server.addr, "/webhooks/gitlab/gl", &gl, b"{}").await.0,
        401
    );

    // The query form reaches the same handler.
    let (status, _) = post(
        server.addr,
        "/webhooks/github?integration=gh",
        &github_headers("push", "ok-1", &body),
        &body,
    )
    .await;
    assert_eq!(status, 202);
    settled(&server).await;
    assert_eq!(runs(&server, "s").await.len(), 1);
    for d in ["x-1", "x-2", "x-3", "x-4", "x-5", "x-6", "x-7"] {
        assert!(
            server
                .state
                .store
                .get_vcs_event_by_delivery("gh", d)
                .await
                .is_err(),
            "{d} stored"
        );
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Alice")
        .env("GIT_AUTHOR_EMAIL", "alice@example.com")
        .env("GIT_COMMITTER_NAME", "Alice")
        .env("GIT_COMMITTER_EMAIL", "alice@example.com")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare repository with `main` holding `network/main.tf`, and a work clone of it.
fn repos(root: &Path) -> (PathBuf, PathBuf) {
    let bare = root.join("infra.git");
    let work = root.join("work");
    std::fs::create_dir_all(&bare).unwrap();
    git(
        &bare,
        &["init", "--quiet", "--bare", "--initial-branch=main"],
    );
    std::fs::create_dir_all(work.join("network")).unwrap();
    git(&work, &["init", "--quiet", "--initial-branch=main"]);
    std::fs::write(work.join("network/main.tf"), "# v1\n").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "--quiet", "-m", "first"]);
    git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
    git(&work, &["push", "--quiet", "origin", "main"]);
    (bare, work)
}

fn commit(work: &Path, file: &str, text: &str, message: &str) -> String {
    let path = work.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    git(work, &["add", "."]);
    git(work, &["commit", "--quiet", "-m", message]);
    git(work, &["rev-parse", "HEAD"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_pull_request_for_one_commit_make_one_run() {
    let server = TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (bare, work) = repos(tmp.path());
    let repo = bare.to_str().unwrap().to_string();
    integration(&server, "gh", pb::VcsProvider::Github).await;
    // Bound to the GitHub integration, so that the poller leaves it to the webhooks.
    stack(&server, "s", &repo, "main", "network", "gh").await;
    let base = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["checkout", "--quiet", "-b", "changes"]);
    let head = commit(&work, "network/vpc.tf", "# vpc\n", "add vpc");
    git(&work, &["push", "--quiet", "origin", "changes"]);

    // The octokit pull request, pointed at the local repository and commits.
    let mut pr = example("pull_request", |x| x["action"] == "opened");
    for side in ["head", "base"] {
        pr["pull_request"][side]["repo"]["clone_url"] = Value::from(repo.clone());
        pr["pull_request"][side]["repo"]["full_name"] = Value::from("local/infra");
    }
    pr["repository"]["clone_url"] = Value::from(repo.clone());
    pr["repository"]["full_name"] = Value::from("local/infra");
    pr["pull_request"]["head"]["sha"] = Value::from(head.clone());
    pr["pull_request"]["head"]["ref"] = Value::from("changes");
    pr["pull_request"]["base"]["sha"] = Value::from(base.clone());
    pr["pull_request"]["base"]["ref"] = Value::from("main");
    let resp = vcs(&server)
        .ingest_event(pb::IngestEventRequest {
            integration_id: "gh".into(),
            event_type: "pull_request".into(),
            delivery_id: "pr-1".into(),
            payload: serde_json::to_vec(&pr).unwrap(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!resp.duplicate);
    assert_eq!(resp.run_ids.len(), 1, "{resp:?}");
    let run = server.get_run(&resp.run_ids[0]).await;
    assert_eq!(run.r#type, pb::RunType::Proposed as i32);
    assert_eq!(run.commit.as_ref().unwrap().hash, head);

    // The push of the same commit (payload file lists complete): no second run.
    let mut push = master_push();
    push["ref"] = Value::from("refs/heads/changes");
    push["before"] = Value::from(base.clone());
    push["after"] = Value::from(head.clone());
    push["commits"][0]["id"] = Value::from(head.clone());
    push["commits"][0]["added"] = serde_json::json!(["network/vpc.tf"]);
    push["head_commit"] = push["commits"][0].clone();
    push["repository"]["clone_url"] = Value::from(repo.clone());
    push["repository"]["full_name"] = Value::from("local/infra");
    let resp = vcs(&server)
        .ingest_event(pb::IngestEventRequest {
            integration_id: "gh".into(),
            event_type: "push".into(),
            delivery_id: "push-1".into(),
            payload: serde_json::to_vec(&push).unwrap(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.run_ids.is_empty(), "{resp:?}");
    assert_eq!(runs(&server, "s").await.len(), 1);
    // IngestEvent is idempotent too.
    let again = vcs(&server)
        .ingest_event(pb::IngestEventRequest {
            integration_id: "gh".into(),
            event_type: "push".into(),
            delivery_id: "push-1".into(),
            payload: serde_json::to_vec(&push).unwrap(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.duplicate);
    assert_eq!(runs(&server, "s").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forks_start_nothing_by_default() {
    let server = TestServer::start().await;
    integration(&server, "gh", pb::VcsProvider::Github).await;
    stack(&server, "s", "Codertocat/Hello-World", "master", "", "").await;
    let mut pr = example("pull_request", |x| x["action"] == "opened");
    pr["pull_request"]["head"]["repo"]["full_name"] = Value::from("mallory/Hello-World");
    pr["pull_request"]["head"]["repo"]["owner"]["login"] = Value::from("mallory");
    let resp = vcs(&server)
        .ingest_event(pb::IngestEventRequest {
            integration_id: "gh".into(),
            event_type: "pull_request".into(),
            delivery_id: "fork-1".into(),
            payload: serde_json::to_vec(&pr).unwrap(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.run_ids.is_empty());
    assert!(runs(&server, "s").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_git_push_is_polled_into_runs() {
    let server = TestServer::start_configured(Duration::from_secs(30), None, |c| {
        c.git_poll_interval = Duration::from_millis(300);
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let (bare, work) = repos(tmp.path());
    let repo = bare.to_str().unwrap().to_string();
    stack(&server, "s", &repo, "main", "network", "").await;
    // The first poll only records the refs.
    for _ in 0..3000 {
        if !server.state.store.git_refs(&repo).await.unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(runs(&server, "s").await.is_empty());

    let tracked_sha = commit(&work, "network/main.tf", "# v2\n", "change network");
    git(&work, &["push", "--quiet", "origin", "main"]);
    let r = wait_runs(&server, "s", 1).await;
    assert_eq!(r[0].r#type, pb::RunType::Tracked as i32);
    let c = r[0].commit.clone().unwrap();
    assert_eq!(
        (c.hash.as_str(), c.branch.as_str()),
        (tracked_sha.as_str(), "main")
    );
    assert_eq!(c.message, "change network");
    assert_eq!(c.author, "Alice");

    // A new branch is compared with main: only its own change counts.
    git(&work, &["checkout", "--quiet", "-b", "feature"]);
    let feature_sha = commit(&work, "network/extra.tf", "# extra\n", "feature work");
    git(&work, &["push", "--quiet", "origin", "feature"]);
    let r = wait_runs(&server, "s", 2).await;
    assert_eq!(r[0].r#type, pb::RunType::Proposed as i32);
    let c = r[0].commit.clone().unwrap();
    assert_eq!(
        (c.hash.as_str(), c.branch.as_str()),
        (feature_sha.as_str(), "feature")
    );

    // Outside the project root: nothing.
    commit(&work, "docs/README.md", "docs\n", "docs only");
    git(&work, &["push", "--quiet", "origin", "feature"]);
    let now_sha = git(&work, &["rev-parse", "HEAD"]);
    for _ in 0..3000 {
        let refs = server.state.store.git_refs(&repo).await.unwrap();
        if refs.iter().any(|r| r.sha == now_sha) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(runs(&server, "s").await.len(), 2);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn cairn_binary() -> PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/cairn");
    assert!(
        bin.is_file(),
        "{} missing: run `cargo build -p cairn` first",
        bin.display()
    );
    bin
}

fn spawn_server(dir: &Path, port: u16) -> std::process::Child {
    Command::new(cairn_binary())
        .arg("server")
        .env("CAIRN_DATA_DIR", dir)
        .env("CAIRN_LISTEN", format!("127.0.0.1:{port}"))
        .env("CAIRN_GIT_POLL_INTERVAL", "1s")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

async fn connect(port: u16) -> tonic::transport::Channel {
    for _ in 0..1500 {
        if let Ok(c) = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
        {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("server on port {port} never came up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_acknowledged_before_a_crash_is_processed_after_restart() {
    use cairn_proto::v1::run_service_client::RunServiceClient;
    use cairn_proto::v1::stack_service_client::StackServiceClient;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = spawn_server(dir.path(), port);
    let channel = connect(port).await;
    let admin = std::fs::read_to_string(dir.path().join("admin.key"))
        .unwrap()
        .trim()
        .to_string();
    let authed = || InterceptedService::new(channel.clone(), Bearer(Some(admin.clone())));
    VcsServiceClient::new(authed())
        .create_integration(pb::CreateIntegrationRequest {
            integration: Some(pb::Integration {
                id: "gh".into(),
                provider: pb::VcsProvider::Github as i32,
                webhook_secret: SECRET.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    StackServiceClient::new(authed())
        .create_stack(pb::CreateStackRequest {
            stack: Some(pb::Stack {
                id: "s".into(),
                name: "s".into(),
                repository: "Codertocat/Hello-World".into(),
                branch: "master".into(),
                vendor: "terraform".into(),
                ..Default::default()
            }),
            env: vec![],
        })
        .await
        .unwrap();
    let body = serde_json::to_vec(&master_push()).unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let (status, text) = post(
        addr,
        "/webhooks/github/gh",
        &github_headers("push", "crash-1", &body),
        &body,
    )
    .await;
    assert_eq!(status, 202, "{text}");
    child.kill().unwrap();
    child.wait().unwrap();

    let port = free_port();
    let mut child = spawn_server(dir.path(), port);
    let channel = connect(port).await;
    let mut runs_client =
        RunServiceClient::new(InterceptedService::new(channel, Bearer(Some(admin))));
    let mut found = Vec::new();
    for _ in 0..3000 {
        found = runs_client
            .list_runs(pb::ListRunsRequest {
                stack_id: "s".into(),
                page: None,
            })
            .await
            .unwrap()
            .into_inner()
            .runs;
        if !found.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(found.len(), 1, "exactly one run after the restart");
    assert_eq!(found[0].r#type, pb::RunType::Tracked as i32);
    assert_eq!(
        found[0].commit.as_ref().unwrap().hash,
        "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_push_with_its_token_creates_a_run() {
    let server = TestServer::start().await;
    integration(&server, "gl", pb::VcsProvider::Gitlab).await;
    stack(
        &server,
        "s",
        "platform/infrastructure",
        "main",
        "network",
        "",
    )
    .await;
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../cairn-vcs/tests/fixtures/gitlab/push.json");
    let body = std::fs::read(&fixture).unwrap();
    let headers = |token: &str| {
        vec![
            ("X-Gitlab-Event", "Push Hook".to_string()),
            ("X-Gitlab-Token", token.to_string()),
            ("X-Gitlab-Event-UUID", "gl-1".to_string()),
        ]
    };
    assert_eq!(
        post(server.addr, "/webhooks/gitlab/gl", &headers("nope"), &body)
            .await
            .0,
        401
    );
    let (status, text) = post(server.addr, "/webhooks/gitlab/gl", &headers(SECRET), &body).await;
    assert_eq!(status, 202, "{text}");
    settled(&server).await;
    let r = wait_runs(&server, "s", 1).await;
    assert_eq!(r[0].r#type, pb::RunType::Tracked as i32);
    assert_eq!(
        r[0].commit.as_ref().unwrap().hash,
        "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"
    );
    let (status, text) = post(server.addr, "/webhooks/gitlab/gl", &headers(SECRET), &body).await;
    assert_eq!((status, text.contains("duplicate")), (200, true), "{text}");
}

async fn push_policy(server: &TestServer, id: &str, body: &str, stacks: &[&str]) {
    let mut policies = server.policies(&server.admin);
    policies
        .create_policy(pb::CreatePolicyRequest {
            policy: Some(pb::Policy {
                id: id.into(),
                name: id.into(),
                r#type: pb::PolicyType::Push as i32,
                body: body.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    for s in stacks {
        policies
            .attach_policy(pb::AttachPolicyRequest {
                policy_id: id.into(),
                stack_id: s.to_string(),
            })
            .await
            .unwrap();
    }
}

/// An octokit `pull_request` example with `action`, pointed at `repo` (stored as `local/infra`)
/// and at the given head and base commits. `edited` and merged closes have no example of
/// their own: the `labeled` and `closed` ones are reshaped as GitHub sends those.
fn pull_request(action: &str, repo: &str, head: &str, base: &str) -> Value {
    let source = match action {
        "edited" => "labeled",
        "merged" => "closed",
        a => a,
    };
    let mut pr = example("pull_request", |x| x["action"] == source);
    pr["action"] = Value::from(if action == "merged" { "closed" } else { action });
    if action == "edited" {
        pr.as_object_mut().unwrap().remove("label");
        pr["changes"] = serde_json::json!({"title": {"from": "Old title"}});
    }
    if action == "merged" {
        pr["pull_request"]["merged"] = Value::from(true);
        pr["pull_request"]["state"] = Value::from("closed");
    }
    for side in ["head", "base"] {
        pr["pull_request"][side]["repo"]["clone_url"] = Value::from(repo);
        pr["pull_request"][side]["repo"]["full_name"] = Value::from("local/infra");
    }
    pr["repository"]["clone_url"] = Value::from(repo);
    pr["repository"]["full_name"] = Value::from("local/infra");
    pr["pull_request"]["head"]["sha"] = Value::from(head);
    pr["pull_request"]["head"]["ref"] = Value::from("changes");
    pr["pull_request"]["base"]["sha"] = Value::from(base);
    pr["pull_request"]["base"]["ref"] = Value::from("main");
    pr
}

/// The octokit `issue_comment` example (a comment on a plain issue) made a new comment on pull
/// request `number` of `local/infra`, as GitHub marks comments on pull requests.
fn pr_comment(number: u64, body: &str) -> Value {
    let mut c = example("issue_comment", |x| x["action"] == "created");
    c["issue"]["number"] = Value::from(number);
    c["issue"]["pull_request"] = serde_json::json!({
        "url": format!("https://api.github.com/repos/local/infra/pulls/{number}"),
        "html_url": format!("https://github.com/local/infra/pull/{number}"),
        "diff_url": format!("https://github.com/local/infra/pull/{number}.diff"),
        "patch_url": format!("https://github.com/local/infra/pull/{number}.patch"),
    });
    c["comment"]["body"] = Value::from(body);
    c["repository"]["full_name"] = Value::from("local/infra");
    c
}

async fn ingest(server: &TestServer, event: &str, delivery: &str, payload: &Value) -> Vec<String> {
    let resp = vcs(server)
        .ingest_event(pb::IngestEventRequest {
            integration_id: "gh".into(),
            event_type: event.into(),
            delivery_id: delivery.into(),
            payload: serde_json::to_vec(payload).unwrap(),
        })
        .await
        .unwrap_or_else(|e| panic!("{delivery}: {e}"))
        .into_inner();
    assert!(!resp.duplicate, "{delivery}");
    resp.run_ids
}

/// What processing a delivery noted (the stored event's result).
async fn notes(server: &TestServer, delivery: &str) -> Vec<String> {
    let rec = server
        .state
        .store
        .get_vcs_event_by_delivery("gh", delivery)
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&rec.result).unwrap();
    v["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect()
}

/// The inputs a policy was evaluated with, oldest first.
async fn sampled_inputs(server: &TestServer, policy: &str) -> Vec<Value> {
    let mut samples = server
        .state
        .store
        .list_policy_samples(policy, &cairn_store::Page::first(100))
        .await
        .unwrap()
        .items;
    samples.reverse();
    samples
        .iter()
        .map(|s| serde_json::from_str(&s.input_json).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comments_on_pull_requests_reach_push_policies() {
    let server = TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (bare, work) = repos(tmp.path());
    let repo = bare.to_str().unwrap().to_string();
    integration(&server, "gh", pb::VcsProvider::Github).await;
    stack(&server, "s", &repo, "main", "network", "gh").await;
    stack(&server, "t", &repo, "main", "network", "gh").await;
    // Spacelift's example, for its `/spacelift` prefix and Cairn's own.
    push_policy(
        &server,
        "comments",
        r#"package spacelift

track {
    input.pull_request.action == "commented"
    input.pull_request.comment == concat(" ", ["/spacelift", "deploy", input.stack.id])
}

track {
    input.pull_request.action == "commented"
    input.pull_request.comment == concat(" ", ["/cairn", "deploy", input.stack.id])
}

propose { input.pull_request.action == "opened" }
"#,
        &["s", "t"],
    )
    .await;
    let base = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["checkout", "--quiet", "-b", "changes"]);
    let head = commit(&work, "network/vpc.tf", "# vpc\n", "add vpc");
    git(&work, &["push", "--quiet", "origin", "changes"]);

    let opened = ingest(
        &server,
        "pull_request",
        "pr-open",
        &pull_request("opened", &repo, &head, &base),
    )
    .await;
    assert_eq!(opened.len(), 2, "a proposed run per stack");

    // `/spacelift deploy s`: a tracked run of the pull request's head on s only.
    let ran = ingest(
        &server,
        "issue_comment",
        "c-1",
        &pr_comment(2, "/spacelift deploy s"),
    )
    .await;
    assert_eq!(ran.len(), 1, "{:?}", notes(&server, "c-1").await);
    let run = server.get_run(&ran[0]).await;
    assert_eq!(run.stack_id, "s");
    assert_eq!(run.r#type, pb::RunType::Tracked as i32);
    assert_eq!(run.commit.as_ref().unwrap().hash, head);

    // The same command again: the tracked run of that commit exists.
    assert!(ingest(
        &server,
        "issue_comment",
        "c-2",
        &pr_comment(2, "/spacelift deploy s")
    )
    .await
    .is_empty());
    assert!(notes(&server, "c-2")
        .await
        .iter()
        .any(|n| n.starts_with("s: run ") && n.contains("already exists")));

    // Cairn's prefix reaches policies too.
    let ran = ingest(
        &server,
        "issue_comment",
        "c-3",
        &pr_comment(2, "/cairn deploy t"),
    )
    .await;
    assert_eq!(ran.len(), 1);
    assert_eq!(server.get_run(&ran[0]).await.stack_id, "t");

    // Ordinary discussion is not evaluated at all.
    let before = sampled_inputs(&server, "comments").await.len();
    assert!(ingest(
        &server,
        "issue_comment",
        "c-4",
        &pr_comment(2, "LGTM, please deploy s")
    )
    .await
    .is_empty());
    assert!(notes(&server, "c-4")
        .await
        .iter()
        .any(|n| n.contains("does not start with /spacelift or /cairn")));
    assert_eq!(sampled_inputs(&server, "comments").await.len(), before);

    // What the policy saw for the first comment: Spacelift's comment-driven input.
    let inputs = sampled_inputs(&server, "comments").await;
    let seen = inputs
        .iter()
        .find(|i| i["stack"]["id"] == "s" && i["pull_request"]["comment"] == "/spacelift deploy s")
        .expect("a sample of the first comment");
    let pr = &seen["pull_request"];
    assert_eq!(pr["action"], "commented");
    assert_eq!(pr["id"], 2);
    assert_eq!(pr["head"]["branch"], "changes");
    assert_eq!(pr["base"]["branch"], "main");
    assert_eq!(pr["diff"], serde_json::json!(["network/vpc.tf"]));
    assert_eq!(pr["action_initiator"], "Codertocat");
    assert_eq!(seen["push"]["branch"], "changes");
    // Before the comment the input of the opened event had no comment.
    assert!(inputs[0]["pull_request"]["comment"].is_null());
    assert_eq!(inputs[0]["pull_request"]["action"], "opened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_request_actions_reach_push_policies_with_spacelift_names() {
    let server = TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (bare, work) = repos(tmp.path());
    let repo = bare.to_str().unwrap().to_string();
    integration(&server, "gh", pb::VcsProvider::Github).await;
    stack(&server, "locking", &repo, "main", "network", "gh").await;
    // No push policy: Spacelift's default policy.
    stack(&server, "plain", &repo, "main", "network", "gh").await;
    // The lock / unlock example of Spacelift's push policy page, plus a label-driven deploy.
    push_policy(
        &server,
        "pr-flow",
        r#"package spacelift

import future.keywords

lock_id := sprintf("PR_ID_%d", [input.pull_request.id])

lock := lock_id {
    input.pull_request.action in ["opened", "synchronize"]
}

unlock := lock_id {
    input.pull_request.action in ["closed", "merged"]
}

propose { not is_null(input.pull_request) }

track {
    input.pull_request.action == "labeled"
    input.pull_request.labels[_] == "bug"
}
"#,
        &["locking"],
    )
    .await;
    let base = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["checkout", "--quiet", "-b", "changes"]);
    let head = commit(&work, "network/vpc.tf", "# vpc\n", "add vpc");
    git(&work, &["push", "--quiet", "origin", "changes"]);
    let stack_of = |id: &'static str| {
        let server = &server;
        async move {
            server
                .stacks(&server.admin)
                .get_stack(pb::GetStackRequest {
                    stack_id: id.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .stack
                .unwrap()
        }
    };

    let runs_opened = ingest(
        &server,
        "pull_request",
        "opened",
        &pull_request("opened", &repo, &head, &base),
    )
    .await;
    assert_eq!(runs_opened.len(), 2, "a proposed run on both stacks");
    assert_eq!(stack_of("locking").await.locked_by, "PR_ID_2");

    // labeled (the example adds `bug`): a tracked run on the policy's stack; the default
    // policy proposes again, which the existing proposed run absorbs.
    let labeled = ingest(
        &server,
        "pull_request",
        "labeled",
        &pull_request("labeled", &repo, &head, &base),
    )
    .await;
    assert_eq!(labeled.len(), 1, "{:?}", notes(&server, "labeled").await);
    let tracked = server.get_run(&labeled[0]).await;
    assert_eq!(
        (tracked.stack_id.as_str(), tracked.r#type),
        ("locking", pb::RunType::Tracked as i32)
    );
    for action in ["unlabeled", "edited"] {
        let pr = pull_request(action, &repo, &head, &base);
        assert!(ingest(&server, "pull_request", action, &pr)
            .await
            .is_empty());
    }
    // An action Spacelift does not name is not evaluated.
    let assigned = pull_request("assigned", &repo, &head, &base);
    assert!(ingest(&server, "pull_request", "assigned", &assigned)
        .await
        .is_empty());
    assert!(notes(&server, "assigned")
        .await
        .iter()
        .any(|n| n.contains("action assigned is not passed to push policies")));

    // Merged: GitHub's merge commit on main. The pull request's push is that commit, so the
    // default policy tracks it, and the push of main that GitHub also sends adds nothing.
    git(&work, &["checkout", "--quiet", "main"]);
    git(
        &work,
        &[
            "merge",
            "--quiet",
            "--no-ff",
            "-m",
            "Merge pull request #2",
            "changes",
        ],
    );
    let merge = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["push", "--quiet", "origin", "main"]);
    let mut merged = pull_request("merged", &repo, &head, &base);
    merged["pull_request"]["merge_commit_sha"] = Value::from(merge.clone());
    let ran = ingest(&server, "pull_request", "merged", &merged).await;
    let mut kinds: Vec<(String, i32, String)> = Vec::new();
    for id in &ran {
        let r = server.get_run(id).await;
        kinds.push((r.stack_id, r.r#type, r.commit.unwrap().hash));
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            (
                "locking".to_string(),
                pb::RunType::Proposed as i32,
                merge.clone()
            ),
            (
                "plain".to_string(),
                pb::RunType::Tracked as i32,
                merge.clone()
            ),
        ]
    );
    assert_eq!(stack_of("locking").await.locked_by, "", "unlocked on merge");
    assert_eq!(
        stack_of("plain")
            .await
            .tracked_commit
            .map(|c| c.hash)
            .unwrap_or_default(),
        merge
    );
    let mut push = master_push();
    push["ref"] = Value::from("refs/heads/main");
    push["before"] = Value::from(base.clone());
    push["after"] = Value::from(merge.clone());
    push["commits"][0]["id"] = Value::from(merge.clone());
    push["commits"][0]["added"] = serde_json::json!(["network/vpc.tf"]);
    push["head_commit"] = push["commits"][0].clone();
    push["repository"]["clone_url"] = Value::from(repo.clone());
    push["repository"]["full_name"] = Value::from("local/infra");
    assert!(ingest(&server, "push", "push-merge", &push)
        .await
        .is_empty());
    assert!(notes(&server, "push-merge")
        .await
        .iter()
        .any(|n| n.starts_with("plain: run ") && n.contains("already exists")));

    // Closed without merging: `closed`, and the push is the head again.
    let mut closed = pull_request("closed", &repo, &head, &base);
    closed["number"] = Value::from(3);
    closed["pull_request"]["number"] = Value::from(3);
    assert!(ingest(&server, "pull_request", "closed", &closed)
        .await
        .is_empty());

    // The push of main was evaluated too, as a push (`pull_request` null).
    let inputs: Vec<Value> = sampled_inputs(&server, "pr-flow")
        .await
        .into_iter()
        .filter(|i| !i["pull_request"].is_null())
        .collect();
    let actions: Vec<&str> = inputs
        .iter()
        .map(|i| i["pull_request"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "opened",
            "labeled",
            "unlabeled",
            "edited",
            "merged",
            "closed"
        ]
    );
    assert_eq!(inputs[4]["push"]["branch"], "main");
    assert_eq!(inputs[4]["push"]["message"], "Merge pull request #2");
    assert_eq!(inputs[4]["pull_request"]["head"]["branch"], "changes");
    assert_eq!(inputs[5]["push"]["branch"], "changes");
    assert_eq!(inputs[5]["push"]["message"], "add vpc");
    assert_eq!(inputs[5]["pull_request"]["closed"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_request_diffs_come_from_a_fetched_url_and_its_pull_ref() {
    let server = TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    // `<tmp>/local/infra.git`: its file:// URL ends in the payload's full name.
    std::fs::create_dir_all(tmp.path().join("local")).unwrap();
    let (bare, work) = repos(&tmp.path().join("local"));
    let url = format!("file://{}", bare.display());
    integration(&server, "gh", pb::VcsProvider::Github).await;
    stack(&server, "s", &url, "main", "network", "gh").await;
    let base = git(&work, &["rev-parse", "HEAD"]);
    // The head exists only as GitHub keeps pull requests: refs/pull/7/head, no branch.
    git(&work, &["checkout", "--quiet", "-b", "feature"]);
    let head = commit(&work, "network/subnet.tf", "# subnet\n", "add subnet");
    git(
        &work,
        &["push", "--quiet", "origin", "HEAD:refs/pull/7/head"],
    );

    // The payload's clone URL is GitHub's, which the server must not need.
    let hosted = "https://github.invalid/local/infra.git";
    let mut pr = pull_request("opened", hosted, &head, &base);
    pr["number"] = Value::from(7);
    pr["pull_request"]["number"] = Value::from(7);
    pr["pull_request"]["head"]["ref"] = Value::from("feature");
    let ran = ingest(&server, "pull_request", "pr-7", &pr).await;
    // The default policy proposes only because the diff names a file under the root.
    assert_eq!(ran.len(), 1, "{:?}", notes(&server, "pr-7").await);
    let run = server.get_run(&ran[0]).await;
    assert_eq!(run.r#type, pb::RunType::Proposed as i32);
    assert_eq!(run.commit.as_ref().unwrap().hash, head);
    assert_eq!(run.commit.as_ref().unwrap().message, "add subnet");

    // A head that is nowhere: logged, noted, and the policy sees no diff (no run).
    let mut lost = pull_request(
        "opened",
        hosted,
        "1111111111111111111111111111111111111111",
        &base,
    );
    lost["number"] = Value::from(8);
    lost["pull_request"]["number"] = Value::from(8);
    assert!(ingest(&server, "pull_request", "pr-8", &lost)
        .await
        .is_empty());
    let n = notes(&server, "pr-8").await;
    assert!(
        n.iter()
            .any(|n| n.starts_with("pull request diff unknown") && n.contains("refs/pull/8/head")),
        "{n:?}"
    );
}

/// Two server processes on one SQLite file (two servers on one data directory here: the same
/// database, master key and repositories cache) working through the same deliveries at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_database_create_one_run_per_commit() {
    let a = TestServer::start().await;
    let b = cairn_server::Server::builder(common::config(a.dir.path(), Duration::from_secs(30)))
        .build()
        .await
        .unwrap();
    common::replicas::replicas_process_the_same_events(&[&a.state, &b.state()], 12).await;
}

/// A GitLab note on a merge request is a comment-driven action too: Spacelift's unlock example,
/// with GitLab's merge request snapshot (no earlier event needed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_merge_request_note_unlocks_through_the_push_policy() {
    let server = TestServer::start().await;
    integration(&server, "gl", pb::VcsProvider::Gitlab).await;
    stack(&server, "s", "platform/infrastructure", "main", "", "gl").await;
    push_policy(
        &server,
        "unlock-by-comment",
        r#"package spacelift

lock_id := sprintf("MR_%d", [input.pull_request.id])

unlock := lock_id {
    input.pull_request.action == "commented"
    input.pull_request.comment == concat(" ", ["/cairn", "unlock", input.stack.id])
}
"#,
        &["s"],
    )
    .await;
    let mut locked = server.state.store.get_stack("s").await.unwrap();
    locked.locked_by = "MR_1".into();
    server.state.store.update_stack(locked).await.unwrap();

    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../cairn-vcs/tests/fixtures/gitlab/note_merge_request.json");
    let mut note: Value = serde_json::from_slice(&std::fs::read(&fixture).unwrap()).unwrap();
    note["object_attributes"]["note"] = Value::from("/cairn unlock s");
    let body = serde_json::to_vec(&note).unwrap();
    let headers = vec![
        ("X-Gitlab-Event", "Note Hook".to_string()),
        ("X-Gitlab-Token", SECRET.to_string()),
        ("X-Gitlab-Event-UUID", "note-1".to_string()),
    ];
    let (status, text) = post(server.addr, "/webhooks/gitlab/gl", &headers, &body).await;
    assert_eq!(status, 202, "{text}");
    settled(&server).await;
    assert_eq!(
        server.state.store.get_stack("s").await.unwrap().locked_by,
        ""
    );
    let inputs = sampled_inputs(&server, "unlock-by-comment").await;
    assert_eq!(inputs.len(), 1);
    let pr = &inputs[0]["pull_request"];
    assert_eq!(pr["action"], "commented");
    assert_eq!(pr["comment"], "/cairn unlock s");
    assert_eq!(pr["id"], 1);
    assert_eq!(pr["head"]["branch"], "ms-viewport");
}

/// A comment on a pull request Cairn has no event of (opened before the integration existed):
/// the pull request is read from the integration's GitHub API, as Spacelift's GitHub App does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comment_on_an_unseen_pull_request_reads_it_from_the_github_api() {
    let server = TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (bare, work) = repos(tmp.path());
    let repo = bare.to_str().unwrap().to_string();
    let base = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["checkout", "--quiet", "-b", "changes"]);
    let head = commit(&work, "network/vpc.tf", "# vpc\n", "add vpc");
    git(&work, &["push", "--quiet", "origin", "changes"]);

    // The fake API answers GET /pulls/2 with the octokit example's pull request object, which
    // is what GitHub's REST API returns; it records the Authorization header of each call.
    let pr_object = pull_request("opened", &repo, &head, &base)["pull_request"].clone();
    let seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>> = Default::default();
    let app = {
        let seen = seen.clone();
        axum::Router::new().route(
            "/api/v3/repos/local/infra/pulls/{number}",
            axum::routing::get(
                move |axum::extract::Path(number): axum::extract::Path<u64>,
                      headers: axum::http::HeaderMap| {
                    let seen = seen.clone();
                    let pr_object = pr_object.clone();
                    async move {
                        let auth = headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        seen.lock().unwrap().push((number.to_string(), auth));
                        if number == 2 {
                            (axum::http::StatusCode::OK, pr_object.to_string())
                        } else {
                            (axum::http::StatusCode::NOT_FOUND, "{}".to_string())
                        }
                    }
                },
            ),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}/api/v3", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    vcs(&server)
        .create_integration(pb::CreateIntegrationRequest {
            integration: Some(pb::Integration {
                id: "gh".into(),
                provider: pb::VcsProvider::Github as i32,
                api_base_url: api,
                webhook_secret: SECRET.into(),
                token: "ghp_reader".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    stack(&server, "s", &repo, "main", "network", "gh").await;
    push_policy(
        &server,
        "deploy-by-comment",
        r#"package spacelift

track {
    input.pull_request.action == "commented"
    input.pull_request.comment == concat(" ", ["/spacelift", "deploy", input.stack.id])
}
"#,
        &["s"],
    )
    .await;

    let ran = ingest(
        &server,
        "issue_comment",
        "c-api",
        &pr_comment(2, "/spacelift deploy s"),
    )
    .await;
    assert_eq!(ran.len(), 1, "{:?}", notes(&server, "c-api").await);
    let run = server.get_run(&ran[0]).await;
    assert_eq!(run.r#type, pb::RunType::Tracked as i32);
    assert_eq!(run.commit.as_ref().unwrap().hash, head);
    assert_eq!(
        seen.lock().unwrap().clone(),
        [("2".to_string(), "Bearer ghp_reader".to_string())]
    );

    // A pull request GitHub does not know: nothing to evaluate, said so.
    assert!(ingest(
        &server,
        "issue_comment",
        "c-404",
        &pr_comment(9, "/spacelift deploy s")
    )
    .await
    .is_empty());
    assert!(notes(&server, "c-404")
        .await
        .iter()
        .any(|n| n.contains("pull request 9") && n.contains("head is unknown")));
}

/// A GitHub push of `main` from `before` to `after` (one commit listing `changed`, as modified,
/// added and removed).
fn main_push(
    repo: &str,
    (before, after): (&str, &str),
    [modified, added, removed]: [&[&str]; 3],
    forced: bool,
) -> Value {
    let mut push = master_push();
    push["ref"] = Value::from("refs/heads/main");
    push["before"] = Value::from(before);
    push["after"] = Value::from(after);
    push["forced"] = Value::from(forced);
    let mut c = push["commits"][0].clone();
    c["id"] = Value::from(after);
    c["modified"] = serde_json::json!(modified);
    c["added"] = serde_json::json!(added);
    c["removed"] = serde_json::json!(removed);
    push["commits"] = Value::from(vec![c.clone()]);
    push["head_commit"] = c;
    push["repository"]["clone_url"] = Value::from(repo);
    push["repository"]["full_name"] = Value::from("local/infra");
    push
}

/// Leases the next run to `agent` and finishes it with an empty plan; its id. A lease proves
/// that the scheduler has told whether the run is a deployment run (it does before leasing).
async fn plan_next(server: &TestServer, agent: &mut common::TestAgent) -> pb::Run {
    let lease = agent.lease().await;
    agent.plan_through(&lease, &[]).await;
    server
        .wait_state(&lease.run_id, pb::RunState::Finished)
        .await
}

/// The deployment `run_id` runs for; None for a plain tracked run.
async fn deployment_of(server: &TestServer, run_id: &str) -> Option<String> {
    let run = server.state.store.get_run(run_id).await.unwrap();
    run.is_deployment_run().then_some(run.deployment)
}

/// Whether the server's Git cache of `repo` holds `sha` (i.e. the server fetched it).
fn cached(server: &TestServer, repo: &str, sha: &str) -> bool {
    let name = cairn_server::crypto::sha256_hex(repo.as_bytes());
    let dir = server
        .state
        .config
        .data_dir
        .join("git-cache")
        .join(format!("{}.git", &name[..24]));
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["cat-file", "-e", &format!("{sha}^{{commit}}")])
        .status()
        .is_ok_and(|s| s.success())
}

const PROD: &str = "[deployments.prod]\ninputs = { region = \"eu\" }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_adding_cairn_toml_makes_deployment_runs_after_pushes_that_did_not() {
    let server = TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (bare, work) = repos(tmp.path());
    let repo = bare.to_str().unwrap().to_string();
    integration(&server, "gh", pb::VcsProvider::Github).await;
    stack(&server, "s", &repo, "main", "network", "gh").await;
    let mut agent = common::TestAgent::connect(&server, 1).await;
    let first = git(&work, &["rev-parse", "HEAD"]);

    let c1 = commit(&work, "network/main.tf", "# v2\n", "v2");
    git(&work, &["push", "--quiet", "origin", "main"]);
    let mf: &[&str] = &["network/main.tf"];
    let payload = main_push(&repo, (&first, &c1), [mf, &[], &[]], false);
    let r1 = ingest(&server, "push", "p-1", &payload).await;
    let done = plan_next(&server, &mut agent).await;
    assert_eq!(done.id, r1[0]);
    assert_eq!(deployment_of(&server, &done.id).await, None);

    // The parent's answer carries over: no cairn.toml listed, none at the new commit, and the
    // server did not fetch to find out.
    let c2 = commit(&work, "network/main.tf", "# v3\n", "v3");
    git(&work, &["push", "--quiet", "origin", "main"]);
    let payload = main_push(&repo, (&c1, &c2), [mf, &[], &[]], false);
    let r2 = ingest(&server, "push", "p-2", &payload).await;
    let done = plan_next(&server, &mut agent).await;
    assert_eq!(done.id, r2[0]);
    assert_eq!(deployment_of(&server, &done.id).await, None);
    assert!(cached(&server, &repo, &c1));
    assert!(!cached(&server, &repo, &c2));

    // The push that adds the project root's cairn.toml is looked at: a deployment run.
    let c3 = commit(&work, "network/cairn.toml", PROD, "deployments");
    git(&work, &["push", "--quiet", "origin", "main"]);
    let added: &[&str] = &["network/cairn.toml"];
    let payload = main_push(&repo, (&c2, &c3), [&[], added, &[]], false);
    let r3 = ingest(&server, "push", "p-3", &payload).await;
    let lease = agent.lease().await;
    assert_eq!(lease.run_id, r3[0]);
    assert_eq!(
        deployment_of(&server, &r3[0]).await.as_deref(),
        Some("prod")
    );
    assert_eq!(server.get_run(&r3[0]).await.commit.unwrap().hash, c3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_push_to_a_commit_with_cairn_toml_makes_deployment_runs() {
    let server = TestServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (bare, work) = repos(tmp.path());
    let repo = bare.to_str().unwrap().to_string();
    integration(&server, "gh", pb::VcsProvider::Github).await;
    stack(&server, "s", &repo, "main", "network", "gh").await;
    let mut agent = common::TestAgent::connect(&server, 1).await;
    // History: A adds cairn.toml, B removes it; the stack first hears of B.
    let a = commit(&work, "network/cairn.toml", PROD, "deployments");
    std::fs::remove_file(work.join("network/cairn.toml")).unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "--quiet", "-m", "no deployments"]);
    let b = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["push", "--quiet", "origin", "main"]);
    let toml: &[&str] = &["network/cairn.toml"];
    let payload = main_push(&repo, (&a, &b), [&[], &[], toml], false);
    let r1 = ingest(&server, "push", "p-1", &payload).await;
    let done = plan_next(&server, &mut agent).await;
    assert_eq!(done.id, r1[0]);
    assert_eq!(deployment_of(&server, &done.id).await, None);

    // Main forced back onto A plus a commit touching main.tf: the pushed commit lists no
    // cairn.toml, yet the new head has A's.
    git(&work, &["reset", "--quiet", "--hard", &a]);
    let c = commit(&work, "network/main.tf", "# v2\n", "v2");
    git(&work, &["push", "--quiet", "--force", "origin", "main"]);
    let mf: &[&str] = &["network/main.tf"];
    let payload = main_push(&repo, (&b, &c), [mf, &[], &[]], true);
    let r2 = ingest(&server, "push", "p-2", &payload).await;
    let lease = agent.lease().await;
    assert_eq!(lease.run_id, r2[0]);
    assert_eq!(
        deployment_of(&server, &r2[0]).await.as_deref(),
        Some("prod")
    );
}
