//! Outgoing notifications against local HTTP servers standing in for GitHub's API and for
//! webhook receivers: commit statuses, the pull-request comment edited in place, webhook
//! retries with signatures and the delivery log, Slack bodies, and bad input.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use cairn_core::{Run, Stack};
use cairn_proto::v1 as pb;
use cairn_proto::v1::notification_service_client::NotificationServiceClient;
use cairn_server::notify::{GithubApi, NotifySettings, VcsLookup};
use common::*;
use serde_json::{json, Value};
use tonic::Code;

/// One request a fake endpoint received.
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

#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Requests answered 500 before the endpoint starts to succeed.
    fail_first: usize,
}

impl Recorder {
    fn all(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Polls until `done` holds for what was received (panics after a generous deadline).
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
    let n = {
        let mut seen = r.seen.lock().unwrap();
        seen.push(Seen {
            method: method.to_string(),
            path: uri.path().to_string(),
            headers,
            body,
        });
        seen.len()
    };
    if n <= r.fail_first {
        return (StatusCode::INTERNAL_SERVER_ERROR, "try later".into());
    }
    // GitHub answers a created comment with its id.
    if method == Method::POST && uri.path().ends_with("/comments") {
        return (StatusCode::CREATED, json!({"id": 9001}).to_string());
    }
    (StatusCode::OK, "{}".into())
}

/// An HTTP server on 127.0.0.1:0 recording every request; returns its base URL.
async fn endpoint(recorder: Recorder) -> String {
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

/// Stands in for the VCS integration layer: every stack of `acme/infra` reports to the fake
/// GitHub, and every run belongs to pull request 42.
struct FakeVcs {
    api: String,
}

#[async_trait::async_trait]
impl VcsLookup for FakeVcs {
    async fn github(&self, stack: &Stack) -> Option<GithubApi> {
        stack.repository.contains("acme/infra").then(|| GithubApi {
            api_base_url: format!("{}/api/v3", self.api),
            token: "ghs_test_token".into(),
        })
    }

    async fn pull_request(&self, _run: &Run) -> Option<u64> {
        Some(42)
    }
}

fn notifications(s: &TestServer) -> NotificationServiceClient<Authed> {
    NotificationServiceClient::with_interceptor(s.channel.clone(), Bearer(Some(s.admin.clone())))
}

async fn github_stack(s: &TestServer, id: &str) {
    let mut input = stack_input(id, true);
    input.repository = "https://github.com/acme/infra.git".into();
    let mut c = s.stacks(&s.admin);
    c.create_stack(pb::CreateStackRequest {
        stack: Some(input),
        env: vec![],
    })
    .await
    .unwrap();
    c.sync_stack(pb::SyncStackRequest {
        stack_id: id.into(),
        commit: Some(pb::Commit {
            hash: SHA_A.into(),
            ..Default::default()
        }),
    })
    .await
    .unwrap();
}

/// The next lease, skipping the server's other messages (e.g. the apply decision of the
/// previous autodeploy lease, which these tests do not inspect).
async fn next_lease(agent: &mut TestAgent) -> cairn_proto::agent::v1::Lease {
    loop {
        if let cairn_proto::agent::v1::session_response::Message::Lease(l) = agent.recv().await {
            return l;
        }
    }
}

/// Drives an autodeploy run to FINISHED with the test agent.
async fn finish_run(
    s: &TestServer,
    agent: &mut TestAgent,
    stack: &str,
    addresses: &[&str],
) -> pb::Run {
    let run = s.trigger(stack, pb::RunType::Tracked).await;
    let lease = next_lease(agent).await;
    agent.plan_through(&lease, addresses).await;
    s.wait_state(&run.id, pb::RunState::PreparingApply).await;
    agent.apply_ok(&lease).await;
    s.wait_state(&run.id, pb::RunState::Finished).await
}

fn is_comment(r: &Seen) -> bool {
    r.path.contains("/issues/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn github_statuses_and_one_pull_request_comment_edited_in_place() {
    let gh = Recorder::default();
    let api = endpoint(gh.clone()).await;
    let s = TestServer::start().await;
    s.state.notifier.set_settings(fast());
    s.state
        .notifier
        .set_vcs_lookup(Arc::new(FakeVcs { api: api.clone() }));
    github_stack(&s, "gh").await;
    let mut agent = TestAgent::connect(&s, 1).await;

    let run = finish_run(
        &s,
        &mut agent,
        "gh",
        &["aws_s3_bucket.a", "aws_s3_bucket.b"],
    )
    .await;
    let statuses_path = format!("/api/v3/repos/acme/infra/statuses/{SHA_A}");
    let seen = gh
        .wait_for("the success status and the comment", |all| {
            all.iter()
                .any(|r| r.path == statuses_path && r.json()["state"] == "success")
                && all.iter().any(is_comment)
        })
        .await;
    for r in &seen {
        assert_eq!(r.headers["authorization"], "Bearer ghs_test_token", "{r:?}");
        assert_eq!(r.headers["accept"], "application/vnd.github+json");
        assert_eq!(r.headers["content-type"], "application/json");
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
    // Pending while it runs (one per state), then success with the delta.
    let (last, running) = statuses.split_last().unwrap();
    assert!(!running.is_empty());
    for st in running {
        assert_eq!(st["state"], "pending", "{st}");
        assert_eq!(st["context"], "cairn/gh");
    }
    assert_eq!(
        running[0],
        json!({"state": "pending", "description": "Preparing", "context": "cairn/gh"})
    );
    assert_eq!(
        *last,
        json!({"state": "success", "description": "Finished: +2 ~0 -0", "context": "cairn/gh"})
    );

    let comments: Vec<&Seen> = seen.iter().filter(|r| is_comment(r)).collect();
    assert_eq!(comments.len(), 1, "{comments:#?}");
    assert_eq!(comments[0].method, "POST");
    assert_eq!(
        comments[0].path,
        "/api/v3/repos/acme/infra/issues/42/comments"
    );
    let body = comments[0].json();
    assert_eq!(body.as_object().unwrap().len(), 1, "only `body`: {body}");
    let text = body["body"].as_str().unwrap();
    assert!(text.starts_with("<!-- cairn:stack:gh -->"), "{text}");
    assert!(text.contains("Finished"), "{text}");
    assert!(text.contains(&run.id), "{text}");
    assert!(text.contains("**+2 ~0 -0**"), "{text}");
    assert!(text.contains("| add | `aws_s3_bucket.a` |"), "{text}");
    assert!(text.contains("| add | `aws_s3_bucket.b` |"), "{text}");
    assert_eq!(
        s.state.store.pr_comment_id("gh", 42).await.unwrap(),
        Some(9001)
    );

    // A second run edits the same comment.
    let before = gh.all().len();
    let second = finish_run(&s, &mut agent, "gh", &["aws_s3_bucket.c"]).await;
    let seen = gh
        .wait_for("the edited comment", |all| {
            all[before..].iter().any(is_comment)
        })
        .await;
    let comments: Vec<&Seen> = seen[before..].iter().filter(|r| is_comment(r)).collect();
    assert_eq!(comments.len(), 1, "{comments:#?}");
    assert_eq!(comments[0].method, "PATCH");
    assert_eq!(
        comments[0].path,
        "/api/v3/repos/acme/infra/issues/comments/9001"
    );
    let text = comments[0].json()["body"].as_str().unwrap().to_string();
    assert!(
        text.contains(&second.id) && text.contains("aws_s3_bucket.c"),
        "{text}"
    );
    assert!(!text.contains("aws_s3_bucket.a"), "{text}");
    // The edit is sent after the run's success status.
    let last_status = seen[before..]
        .iter()
        .filter(|r| !is_comment(r))
        .last()
        .unwrap()
        .json();
    assert_eq!(last_status["state"], "success");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_retries_until_it_succeeds_and_logs_signed_attempts() {
    let hook = Recorder {
        fail_first: 2,
        ..Recorder::default()
    };
    let url = endpoint(hook.clone()).await;
    let s = TestServer::start().await;
    s.state.notifier.set_settings(fast());
    s.stack("wh", false, SHA_A).await;
    let created = notifications(&s)
        .create_webhook(pb::CreateWebhookRequest {
            webhook: Some(pb::Webhook {
                url: format!("{url}/hooks/cairn"),
                secret: "s3cret".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .webhook
        .unwrap();
    assert!(created.secret.is_empty(), "the secret is write-only");
    assert_eq!(created.format(), pb::WebhookFormat::Json);
    assert!(created.id.starts_with("wh-"));

    // No agent: the run waits in QUEUED, and canceling it is its only state change.
    let run = s.trigger("wh", pb::RunType::Tracked).await;
    s.runs(&s.admin)
        .cancel_run(pb::CancelRunRequest {
            run_id: run.id.clone(),
        })
        .await
        .unwrap();

    let mut deliveries = Vec::new();
    for _ in 0..1500 {
        deliveries = notifications(&s)
            .list_deliveries(pb::ListDeliveriesRequest {
                webhook_id: created.id.clone(),
                limit: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .deliveries;
        if deliveries.iter().any(|d| d.status != "PENDING") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(deliveries.len(), 1, "{deliveries:#?}");
    let d = &deliveries[0];
    assert_eq!(d.status, "SUCCEEDED", "{d:?}");
    assert_eq!((d.attempts, d.status_code), (3, 200));
    assert_eq!(d.error, "");
    assert_eq!(
        (d.run_id.as_str(), d.run_state.as_str()),
        (run.id.as_str(), "CANCELED")
    );
    assert!(d.created_at > 0 && d.updated_at >= d.created_at);

    let seen = hook.all();
    assert_eq!(seen.len(), 3, "{seen:#?}");
    for r in &seen {
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/hooks/cairn")
        );
        assert_eq!(r.body, seen[0].body, "every attempt sends the same body");
        let sig = r.headers["x-cairn-signature-256"].to_str().unwrap();
        assert_eq!(
            sig,
            cairn_server::notify::webhook::signature(b"s3cret", &r.body)
        );
        // Checked independently of Cairn's own helper.
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(&r.body);
        let hexsig = sig.strip_prefix("sha256=").unwrap();
        mac.verify_slice(&hex::decode(hexsig).unwrap()).unwrap();
    }
    let body = seen[0].json();
    assert_eq!(body["event"], "run_state_changed");
    assert_eq!(body["run"]["id"], run.id.as_str());
    assert_eq!(body["run"]["stack_id"], "wh");
    assert_eq!(body["run"]["state"], "CANCELED");
    assert_eq!(body["run"]["type"], "TRACKED");
    assert_eq!(body["run"]["commit"]["hash"], SHA_A);
    assert_eq!(body["run"]["delta"]["added_resources"], 0);
    assert!(body["run"]["created_at"].as_i64().unwrap() > 0);
    let history: Vec<&str> = body["run"]["states_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["QUEUED", "CANCELED"]);

    // Deleting the webhook removes it and its log.
    let mut c = notifications(&s);
    c.delete_webhook(pb::DeleteWebhookRequest {
        id: created.id.clone(),
    })
    .await
    .unwrap();
    let listed = c
        .list_webhooks(pb::ListWebhooksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .webhooks;
    assert!(listed.is_empty());
    let gone = c
        .list_deliveries(pb::ListDeliveriesRequest {
            webhook_id: created.id,
            limit: 0,
        })
        .await;
    assert_eq!(code(gone), Code::NotFound);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slack_webhooks_get_an_incoming_webhook_message_for_their_stack() {
    let slack = Recorder::default();
    let url = endpoint(slack.clone()).await;
    let s = TestServer::start().await;
    s.state.notifier.set_settings(fast());
    s.stack("chat", false, SHA_A).await;
    let mut c = notifications(&s);
    let hook = c
        .create_webhook(pb::CreateWebhookRequest {
            webhook: Some(pb::Webhook {
                id: "slack-chat".into(),
                url: format!("{url}/services/T0/B0/x"),
                stack_id: "chat".into(),
                format: pb::WebhookFormat::Slack as i32,
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .webhook
        .unwrap();
    assert_eq!(hook.format(), pb::WebhookFormat::Slack);
    let listed = c
        .list_webhooks(pb::ListWebhooksRequest {
            stack_id: "chat".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .webhooks;
    assert_eq!(listed, vec![hook.clone()]);

    let run = s.trigger("chat", pb::RunType::Tracked).await;
    s.runs(&s.admin)
        .cancel_run(pb::CancelRunRequest {
            run_id: run.id.clone(),
        })
        .await
        .unwrap();
    let seen = slack
        .wait_for("the Slack message", |all| !all.is_empty())
        .await;
    assert_eq!(seen[0].path, "/services/T0/B0/x");
    assert!(
        seen[0].headers.get("x-cairn-signature-256").is_none(),
        "no secret, no signature"
    );
    let body = seen[0].json();
    let text = body["text"].as_str().unwrap();
    assert!(
        text.contains(&run.id) && text.contains("chat") && text.contains("CANCELED"),
        "{text}"
    );
    let blocks = body["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "section");
    assert_eq!(blocks[0]["text"]["type"], "mrkdwn");
    let section = blocks[0]["text"]["text"].as_str().unwrap();
    assert!(
        section.contains("`chat`")
            && section.contains("Canceled")
            && section.contains("`+0 ~0 -0`"),
        "{section}"
    );
    assert_eq!(blocks[1]["type"], "context");
    assert!(blocks[1]["elements"][0]["text"]
        .as_str()
        .unwrap()
        .contains("`1111111`"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_webhooks_are_refused_naming_the_field() {
    let s = TestServer::start().await;
    let mut c = notifications(&s);
    let create = |w: pb::Webhook| {
        let mut c = c.clone();
        async move {
            c.create_webhook(pb::CreateWebhookRequest { webhook: Some(w) })
                .await
        }
    };
    for (url, why) in [
        ("not a url", "relative URL without a base"),
        ("ftp://example.test/x", "scheme must be http or https"),
        ("", "must be 1 to"),
    ] {
        let err = create(pb::Webhook {
            url: url.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{url}: {err:?}");
        assert!(
            err.message().contains("webhook.url"),
            "{url}: {}",
            err.message()
        );
        assert!(err.message().contains(why), "{url}: {}", err.message());
    }
    let err = create(pb::Webhook {
        url: "http://127.0.0.1:9/x".into(),
        stack_id: "missing".into(),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("webhook.stack_id"),
        "{}",
        err.message()
    );
    let err = create(pb::Webhook {
        id: "Bad Id".into(),
        url: "http://127.0.0.1:9/x".into(),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert!(err.message().contains("webhook.id"), "{}", err.message());
    let err = c
        .create_webhook(pb::CreateWebhookRequest { webhook: None })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // Readers may look but not create.
    let reader = s.key("ro", pb::Role::Reader).await;
    let mut ro =
        NotificationServiceClient::with_interceptor(s.channel.clone(), Bearer(Some(reader)));
    assert_eq!(
        code(ro.list_webhooks(pb::ListWebhooksRequest::default()).await),
        Code::Ok
    );
    assert_eq!(
        code(
            ro.create_webhook(pb::CreateWebhookRequest {
                webhook: Some(pb::Webhook {
                    url: "http://127.0.0.1:9/x".into(),
                    ..Default::default()
                }),
            })
            .await
        ),
        Code::PermissionDenied
    );
    s.stop().await;
}

#[test]
fn repositories_name_owner_and_repo() {
    use cairn_server::notify::github::owner_repo;
    let want = Some(("acme".to_string(), "infra".to_string()));
    assert_eq!(owner_repo("acme/infra"), want);
    assert_eq!(owner_repo("https://github.com/acme/infra.git"), want);
    assert_eq!(owner_repo("https://ghe.example.test/acme/infra/"), want);
    assert_eq!(owner_repo("git@github.com:acme/infra.git"), want);
    assert_eq!(owner_repo("infra"), None);
}
