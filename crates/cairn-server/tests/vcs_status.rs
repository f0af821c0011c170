//! The VCS integration layer as the notifier's lookup: a signed GitHub `pull_request` webhook
//! creates a proposed run, and that run's commit statuses and pull-request comment reach the
//! integration's API address with its (sealed, then unsealed) token.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use cairn_proto::v1 as pb;
use cairn_proto::v1::vcs_service_client::VcsServiceClient;
use cairn_server::notify::{NotifySettings, VcsLookup};
use cairn_server::vcs::lookup::IntegrationLookup;
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "It's a Secret to Everybody";
const TOKEN: &str = "ghs_integration_token";

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Every request the fake GitHub API received.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl Recorder {
    fn all(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }

    async fn wait_for(&self, what: &str, done: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
        for _ in 0..1500 {
            let all = self.all();
            if done(&all) {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("never saw {what}: {:#?}", self.all());
    }
}

async fn record(
    State(r): State<Recorder>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    r.0.lock().unwrap().push(Seen {
        method: method.to_string(),
        path: uri.path().to_string(),
        headers,
        body,
    });
    if method == Method::POST && uri.path().ends_with("/comments") {
        return (StatusCode::CREATED, json!({"id": 77}).to_string());
    }
    (StatusCode::OK, "{}".into())
}

/// The fake GitHub API on 127.0.0.1:0; returns its base URL.
async fn fake_github(recorder: Recorder) -> String {
    let app = axum::Router::new().fallback(record).with_state(recorder);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn fast() -> NotifySettings {
    NotifySettings {
        max_attempts: 5,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(50),
        ..NotifySettings::default()
    }
}

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

fn pull_request_opened() -> Value {
    examples_index()
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "pull_request")
        .and_then(|e| {
            e["examples"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["action"] == "opened")
        })
        .cloned()
        .expect("an opened pull_request example")
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
    s.write_all(body).await.unwrap();
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

/// A bare repository whose `main` holds `network/main.tf` and whose `changes` branch adds
/// `network/vpc.tf`: (bare repository, base sha, head sha).
fn repository(root: &Path) -> (PathBuf, String, String) {
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
    let base = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["checkout", "--quiet", "-b", "changes"]);
    std::fs::write(work.join("network/vpc.tf"), "# vpc\n").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "--quiet", "-m", "add vpc"]);
    git(&work, &["push", "--quiet", "origin", "changes"]);
    let head = git(&work, &["rev-parse", "HEAD"]);
    (bare, base, head)
}

fn vcs(s: &TestServer) -> VcsServiceClient<Authed> {
    VcsServiceClient::with_interceptor(s.channel.clone(), Bearer(Some(s.admin.clone())))
}

async fn integration(s: &TestServer, id: &str, provider: pb::VcsProvider, api: &str) {
    vcs(s)
        .create_integration(pb::CreateIntegrationRequest {
            integration: Some(pb::Integration {
                id: id.into(),
                provider: provider as i32,
                api_base_url: api.into(),
                webhook_secret: SECRET.into(),
                token: TOKEN.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
}

async fn stack(s: &TestServer, id: &str, integration: &str) {
    let mut input = stack_input(id, false);
    // Matched against the payload by full name; statuses go to acme/infra.
    input.repository = "https://github.com/acme/infra".into();
    input.vcs_integration_id = integration.into();
    s.stacks(&s.admin)
        .create_stack(pb::CreateStackRequest {
            stack: Some(input),
            env: vec![],
        })
        .await
        .unwrap();
}

fn is_comment(r: &Seen) -> bool {
    r.path.contains("/issues/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pull_request_webhook_run_reports_statuses_and_a_comment_to_its_integration() {
    let gh = Recorder::default();
    let api = fake_github(gh.clone()).await;
    let s = TestServer::start().await;
    s.state.notifier.set_settings(fast());
    integration(&s, "gh", pb::VcsProvider::Github, &format!("{api}/api/v3")).await;
    stack(&s, "infra", "gh").await;
    let mut agent = TestAgent::connect(&s, 1).await;

    let tmp = tempfile::tempdir().unwrap();
    let (bare, base, head) = repository(tmp.path());
    let clone_url = bare.to_str().unwrap().to_string();
    let mut pr = pull_request_opened();
    let number = pr["number"].as_u64().unwrap();
    for side in ["head", "base"] {
        pr["pull_request"][side]["repo"]["clone_url"] = Value::from(clone_url.clone());
        pr["pull_request"][side]["repo"]["full_name"] = Value::from("acme/infra");
        pr["pull_request"][side]["repo"]["owner"]["login"] = Value::from("acme");
    }
    pr["repository"]["clone_url"] = Value::from(clone_url.clone());
    pr["repository"]["full_name"] = Value::from("acme/infra");
    pr["pull_request"]["head"]["sha"] = Value::from(head.clone());
    pr["pull_request"]["head"]["ref"] = Value::from("changes");
    pr["pull_request"]["base"]["sha"] = Value::from(base.clone());
    pr["pull_request"]["base"]["ref"] = Value::from("main");
    let body = serde_json::to_vec(&pr).unwrap();
    let headers = [
        ("X-GitHub-Event", "pull_request".to_string()),
        ("X-GitHub-Delivery", "pr-opened-1".to_string()),
        (
            "X-Hub-Signature-256",
            cairn_vcs::github_signature(SECRET.as_bytes(), &body),
        ),
    ];
    let (status, text) = post(s.addr, "/webhooks/github/gh", &headers, &body).await;
    assert_eq!(status, 202, "{text}");

    // The background processor creates the proposed run; the agent plans it to FINISHED.
    let lease = loop {
        if let cairn_proto::agent::v1::session_response::Message::Lease(l) = agent.recv().await {
            break l;
        }
    };
    let run_id = lease.run_id.clone();
    let run = s.get_run(&run_id).await;
    assert_eq!(run.r#type, pb::RunType::Proposed as i32);
    assert_eq!(run.commit.as_ref().unwrap().hash, head);
    assert_eq!(
        s.state.store.get_run(&run_id).await.unwrap().pull_request,
        Some(number)
    );
    agent.plan_through(&lease, &["aws_vpc.main"]).await;
    s.wait_state(&run_id, pb::RunState::Finished).await;

    let statuses_path = format!("/api/v3/repos/acme/infra/statuses/{head}");
    let comments_path = format!("/api/v3/repos/acme/infra/issues/{number}/comments");
    let seen = gh
        .wait_for("the success status and the comment", |all| {
            all.iter()
                .any(|r| r.path == statuses_path && r.json()["state"] == "success")
                && all.iter().any(is_comment)
        })
        .await;
    for r in &seen {
        assert_eq!(
            r.headers["authorization"],
            format!("Bearer {TOKEN}").as_str(),
            "{r:?}"
        );
    }
    let statuses: Vec<Value> = seen
        .iter()
        .filter(|r| !is_comment(r))
        .map(|r| {
            assert_eq!(
                (r.method.as_str(), r.path.as_str()),
                ("POST", statuses_path.as_str())
            );
            r.json()
        })
        .collect();
    let (last, running) = statuses.split_last().unwrap();
    assert!(!running.is_empty(), "no pending status before success");
    for st in running {
        assert_eq!(st["state"], "pending", "{st}");
        assert_eq!(st["context"], "cairn/infra");
    }
    assert_eq!(last["state"], "success", "{last}");
    assert_eq!(last["context"], "cairn/infra");

    let comments: Vec<&Seen> = seen.iter().filter(|r| is_comment(r)).collect();
    assert_eq!(comments.len(), 1, "{comments:#?}");
    assert_eq!(
        (comments[0].method.as_str(), comments[0].path.as_str()),
        ("POST", comments_path.as_str())
    );
    let text = comments[0].json()["body"].as_str().unwrap().to_string();
    assert!(text.contains(&run_id), "{text}");
    assert!(text.contains("| add | `aws_vpc.main` |"), "{text}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_reports_only_github_integrations_and_pull_request_runs() {
    let s = TestServer::start().await;
    integration(&s, "gh", pb::VcsProvider::Github, "").await;
    integration(
        &s,
        "gl",
        pb::VcsProvider::Gitlab,
        "https://gitlab.example.com",
    )
    .await;
    stack(&s, "on-github", "gh").await;
    stack(&s, "on-gitlab", "gl").await;
    stack(&s, "unbound", "").await;
    let lookup = IntegrationLookup::new(&s.state);
    let get = |id: &'static str| {
        let st = s.state.clone();
        async move { st.store.get_stack(id).await.unwrap() }
    };

    let api = lookup.github(&get("on-github").await).await.unwrap();
    assert_eq!(api.api_base_url, "https://api.github.com");
    assert_eq!(api.token, TOKEN);
    assert!(lookup.github(&get("on-gitlab").await).await.is_none());
    assert!(lookup.github(&get("unbound").await).await.is_none());

    // A run not created by a pull request event belongs to no pull request.
    s.stacks(&s.admin)
        .sync_stack(pb::SyncStackRequest {
            stack_id: "on-github".into(),
            commit: Some(pb::Commit {
                hash: SHA_A.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let run = s.trigger("on-github", pb::RunType::Proposed).await;
    let stored = s.state.store.get_run(&run.id).await.unwrap();
    assert_eq!(lookup.pull_request(&stored).await, None);
    s.stop().await;
}
