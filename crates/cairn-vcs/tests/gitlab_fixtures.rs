//! GitLab deliveries, from fixtures modelled on GitLab's documented webhook payloads.

use std::path::Path;

use cairn_vcs::{parse, GitRef, PrAction, Provider, PushPolicyDocs, VcsError, VcsEvent, Webhook};
use http::{HeaderMap, HeaderValue};

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gitlab")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn headers(event: &'static str, token: Option<&'static str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("X-Gitlab-Event", HeaderValue::from_static(event));
    h.insert(
        "X-Gitlab-Event-UUID",
        HeaderValue::from_static("13792a34-cac6-4fda-95a8-c58e00a3954e"),
    );
    if let Some(t) = token {
        h.insert("X-Gitlab-Token", HeaderValue::from_static(t));
    }
    h
}

fn hook(event: &'static str, body: &[u8]) -> VcsEvent {
    let w = Webhook::from_headers(&headers(event, Some("s3cret"))).expect("headers");
    assert_eq!(w.provider, Provider::GitLab);
    w.verify(b"s3cret", body).expect("token");
    w.parse(body).unwrap_or_else(|e| panic!("{event}: {e}"))
}

#[test]
fn token_verification() {
    let w = Webhook::from_headers(&headers("Push Hook", Some("s3cret"))).unwrap();
    assert_eq!(
        w.delivery_key().as_deref(),
        Some("gitlab:13792a34-cac6-4fda-95a8-c58e00a3954e")
    );
    assert!(matches!(
        w.verify(b"other", b""),
        Err(VcsError::BadSignature { .. })
    ));
    let w = Webhook::from_headers(&headers("Push Hook", None)).unwrap();
    assert!(matches!(
        w.verify(b"s3cret", b""),
        Err(VcsError::MissingSignature { .. })
    ));
    // GitLab 17.4+ sends an Idempotency-Key that survives retries: it wins over the event UUID.
    let mut h = headers("Push Hook", Some("s3cret"));
    h.insert(
        "Idempotency-Key",
        HeaderValue::from_static("f9a0-retry-stable"),
    );
    assert_eq!(
        Webhook::from_headers(&h).unwrap().delivery_key().as_deref(),
        Some("gitlab:f9a0-retry-stable")
    );
}

#[test]
fn push_hook() {
    let VcsEvent::Push(p) = hook("Push Hook", &fixture("push.json")) else {
        panic!("not a push")
    };
    assert_eq!(p.git_ref, GitRef::Branch("main".into()));
    assert_eq!(p.repository.full_name, "platform/infrastructure");
    assert_eq!(p.repository.owner, "platform");
    assert_eq!(
        p.repository.clone_url,
        "http://example.com/platform/infrastructure.git"
    );
    assert_eq!(p.pusher.login, "jsmith");
    assert_eq!(p.total_commits, Some(2));
    assert!(!p.created && !p.deleted);
    let head = p
        .head_commit
        .as_ref()
        .expect("head commit found among commits");
    assert_eq!(head.id, p.after);
    assert_eq!(head.message, "Drop the legacy DNS zone");
    assert_eq!(
        p.payload_files().expect("complete"),
        [
            "README.md",
            "dns/legacy.tf",
            "network/main.tf",
            "network/variables.tf"
        ]
    );
    let docs = PushPolicyDocs::for_push(&p, p.payload_files().unwrap());
    assert_eq!(docs.push.branch, "main");
    assert_eq!(docs.push.tag, "");
    assert_eq!(docs.push.author, "GitLab dev user");
    assert_eq!(docs.push.message, "Drop the legacy DNS zone");
    // 2012-01-03T23:36:29+02:00
    assert_eq!(docs.push.created_at, 1_325_626_589_000_000_000);
    assert_eq!(docs.hash, "da1560886d4f094c3e6c9ef40349f7d38b5d27d7");
    assert!(docs.pull_request.is_none());
}

#[test]
fn truncated_push_needs_git() {
    let VcsEvent::Push(p) = hook("Push Hook", &fixture("push_truncated.json")) else {
        panic!("not a push")
    };
    // Four commits pushed, two listed: the payload cannot be trusted for files.
    assert_eq!(p.total_commits, Some(4));
    assert_eq!(p.payload_files(), None);
    let err = cairn_vcs::push_affected_files(&p, None).expect_err("no repo");
    assert!(matches!(err, VcsError::FilesUnavailable { .. }), "{err}");
}

#[test]
fn tag_push_hook() {
    let VcsEvent::Push(p) = hook("Tag Push Hook", &fixture("tag_push.json")) else {
        panic!("not a push")
    };
    assert_eq!(p.git_ref, GitRef::Tag("v1.0.0".into()));
    assert!(p.created);
    assert_eq!(p.message.as_deref(), Some("Release 1.0.0"));
    assert_eq!(p.payload_files(), None, "a tag push lists no commits");
    let docs = PushPolicyDocs::for_push(&p, Vec::new());
    assert_eq!(docs.push.tag, "v1.0.0");
    assert_eq!(docs.push.branch, "");
    assert_eq!(docs.push.message, "Release 1.0.0");
    assert_eq!(docs.push.author, "jsmith");
}

#[test]
fn merge_request_opened() {
    let VcsEvent::PullRequest(p) = hook("Merge Request Hook", &fixture("merge_request_open.json"))
    else {
        panic!("not a merge request")
    };
    assert_eq!(p.action, PrAction::Opened);
    assert_eq!(p.number, 1);
    assert_eq!(p.title, "MS-Viewport");
    assert_eq!(p.head.branch, "ms-viewport");
    assert_eq!(p.head.sha, "da1560886d4f094c3e6c9ef40349f7d38b5d27d7");
    assert_eq!(p.base.branch, "main");
    assert_eq!(p.labels, ["network"]);
    assert!(!p.fork && !p.draft && !p.closed && !p.merged);
    assert_eq!(p.mergeable, Some(true));
    assert_eq!(p.author.as_ref().map(|a| a.login.as_str()), Some("root"));
    let docs = PushPolicyDocs::for_pull_request(&p, &Default::default());
    let pr = docs.pull_request.unwrap();
    assert_eq!(pr.action, "opened");
    assert_eq!(pr.head_owner, "platform");
    assert_eq!(pr.head.message, "fixed readme");
    assert!(pr.mergeable && pr.undiverged);
}

#[test]
fn merge_request_push_from_a_fork() {
    let VcsEvent::PullRequest(p) = hook(
        "Merge Request Hook",
        &fixture("merge_request_update_fork.json"),
    ) else {
        panic!("not a merge request")
    };
    // `oldrev` marks an update that pushed code.
    assert_eq!(p.action, PrAction::Synchronize);
    assert_eq!(
        p.before.as_deref(),
        Some("95790bf891e76fee5e1747ab589903a6a1f80f22")
    );
    assert!(p.fork);
    assert_eq!(p.head.owner, "contractor");
    assert_eq!(p.head.repo_full_name, "contractor/infrastructure");
    assert!(p.draft);
    assert_eq!(p.mergeable, Some(false));
    assert_eq!(p.undiverged, Some(false));
    assert_eq!(
        p.author, None,
        "GitLab names only the initiator of an update"
    );
    assert_eq!(p.sender.login, "contractor");
    let pr = PushPolicyDocs::for_pull_request(&p, &Default::default())
        .pull_request
        .unwrap();
    assert_eq!(pr.action, "synchronize");
    assert_eq!(pr.head_owner, "contractor");
    assert_eq!(pr.action_initiator, "contractor");
}

#[test]
fn merge_request_labeled_and_merged() {
    let VcsEvent::PullRequest(p) =
        hook("Merge Request Hook", &fixture("merge_request_labeled.json"))
    else {
        panic!("not a merge request")
    };
    assert_eq!(p.action, PrAction::Labeled);
    assert_eq!(p.label.as_deref(), Some("deploy"));
    assert_eq!(p.labels, ["network", "deploy"]);

    let VcsEvent::PullRequest(p) = hook("Merge Request Hook", &fixture("merge_request_merge.json"))
    else {
        panic!("not a merge request")
    };
    assert_eq!(p.action, PrAction::Closed);
    assert!(p.merged && p.closed);
    let pr = PushPolicyDocs::for_pull_request(&p, &Default::default())
        .pull_request
        .unwrap();
    assert_eq!(pr.action, "merged");
    assert!(pr.closed);
}

#[test]
fn notes() {
    let VcsEvent::PullRequestComment(c) = hook("Note Hook", &fixture("note_merge_request.json"))
    else {
        panic!("not a comment")
    };
    assert_eq!(c.pr_number, 1);
    assert_eq!(c.body, "/cairn unlock");
    assert_eq!(c.author.login, "root");
    let pr = c
        .pull_request
        .as_deref()
        .expect("GitLab sends the merge request");
    assert_eq!(pr.head.sha, "da1560886d4f094c3e6c9ef40349f7d38b5d27d7");
    let docs = PushPolicyDocs::for_comment(&c, pr, &Default::default());
    let doc = docs.pull_request.unwrap();
    assert_eq!(doc.action, "commented");
    assert_eq!(doc.comment.as_deref(), Some("/cairn unlock"));
    assert_eq!(doc.labels, ["network"]);

    let VcsEvent::Ignored(i) = hook("Note Hook", &fixture("note_issue.json")) else {
        panic!("a comment on an issue must be ignored")
    };
    assert!(i.reason.contains("Issue"), "{}", i.reason);
}

#[test]
fn unknown_and_malformed() {
    let err = parse(Provider::GitLab, "Pipeline Hook", b"{}").expect_err("unknown");
    assert!(matches!(err, VcsError::UnknownEvent { .. }), "{err}");
    let err = parse(Provider::GitLab, "Push Hook", b"[1,2").expect_err("malformed");
    assert!(matches!(err, VcsError::MalformedPayload { .. }), "{err}");
    // GitHub's event names mean nothing to GitLab.
    let err = parse(Provider::GitLab, "push", &fixture("push.json")).expect_err("unknown");
    assert!(matches!(err, VcsError::UnknownEvent { .. }), "{err}");
}
