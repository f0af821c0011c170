//! Every push, pull_request, issue_comment and ping example of `@octokit/webhooks-examples`
//! (GitHub's own documented payloads, all API versions shipped in the package) goes through
//! the full path: signed as GitHub signs, verified from headers, parsed.
//!
//! The package is provisioned into `$CAIRN_TOOLS_DIR/node` (default `<workspace>/target/tools`):
//! `npm install --prefix target/tools/node @octokit/webhooks-examples`.

use std::path::{Path, PathBuf};

use cairn_vcs::{github_signature, parse, GitRef, PrAction, Provider, VcsError, VcsEvent, Webhook};
use http::{HeaderMap, HeaderValue};
use serde_json::Value;

const SECRET: &[u8] = b"cairn test secret \xe2\x9c\x93";

fn examples_dir() -> PathBuf {
    let tools = std::env::var_os("CAIRN_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools"));
    let dir = tools.join("node/node_modules/@octokit/webhooks-examples");
    assert!(
        dir.join("api.github.com/index.json").is_file(),
        "@octokit/webhooks-examples is missing from {}: run \
         `npm install --prefix {}/node @octokit/webhooks-examples` (or `cargo xtask provision`)",
        dir.display(),
        tools.display()
    );
    dir
}

/// `(api version, event name, example)` for every example of the events Cairn handles.
fn examples() -> Vec<(String, String, Value)> {
    let dir = examples_dir();
    let mut out = Vec::new();
    let mut versions: Vec<_> = std::fs::read_dir(&dir)
        .expect("read examples dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("index.json").is_file())
        .collect();
    versions.sort();
    for v in versions {
        let name = v.file_name().unwrap().to_string_lossy().into_owned();
        let index: Value =
            serde_json::from_slice(&std::fs::read(v.join("index.json")).expect("read index"))
                .expect("index.json is JSON");
        for event in index.as_array().expect("index is an array") {
            let ev = event["name"].as_str().expect("event name");
            if !["push", "pull_request", "issue_comment", "ping"].contains(&ev) {
                continue;
            }
            for ex in event["examples"].as_array().expect("examples") {
                out.push((name.clone(), ev.to_string(), ex.clone()));
            }
        }
    }
    out
}

fn headers(event: &str, signature: &str, delivery: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    // Lower-case names as HTTP/2 delivers them: lookup must not depend on case.
    h.insert("x-github-event", HeaderValue::from_str(event).unwrap());
    h.insert(
        "x-hub-signature-256",
        HeaderValue::from_str(signature).unwrap(),
    );
    h.insert(
        "x-github-delivery",
        HeaderValue::from_str(delivery).unwrap(),
    );
    h
}

#[test]
fn every_example_verifies_and_parses() {
    let all = examples();
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for (i, (version, event, example)) in all.iter().enumerate() {
        let what = format!("{version} {event} #{i}");
        // GitHub signs the exact bytes it sends; pretty-printed bodies are as valid as compact ones.
        let body = if i % 2 == 0 {
            serde_json::to_vec(example).unwrap()
        } else {
            serde_json::to_vec_pretty(example).unwrap()
        };
        let sig = github_signature(SECRET, &body);
        let hook = Webhook::from_headers(&headers(event, &sig, &format!("delivery-{i}")))
            .expect("headers");
        assert_eq!(hook.provider, Provider::GitHub);
        assert_eq!(
            hook.delivery_key().as_deref(),
            Some(format!("github:delivery-{i}").as_str())
        );
        hook.verify(SECRET, &body)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let parsed = hook.parse(&body).unwrap_or_else(|e| panic!("{what}: {e}"));
        *counts.entry(event.clone()).or_default() += 1;
        // Events are stored as JSON by the server (e.g. the last state of a pull request).
        let stored = serde_json::to_string(&parsed).expect("serialize event");
        let back: VcsEvent = serde_json::from_str(&stored).expect("deserialize event");
        assert_eq!(back, parsed, "{what}: JSON round trip");

        match (event.as_str(), &parsed) {
            ("ping", VcsEvent::Ping(p)) => {
                assert_eq!(p.zen, example["zen"].as_str().unwrap(), "{what}");
                assert_eq!(p.hook_id, example["hook_id"].as_u64(), "{what}");
                assert_eq!(
                    p.repository.as_ref().map(|r| r.full_name.as_str()),
                    example["repository"]["full_name"].as_str(),
                    "{what}"
                );
            }
            ("push", VcsEvent::Push(p)) => {
                assert_eq!(p.full_ref, example["ref"].as_str().unwrap(), "{what}");
                assert_eq!(p.after, example["after"].as_str().unwrap(), "{what}");
                assert_eq!(p.before, example["before"].as_str().unwrap(), "{what}");
                assert_eq!(
                    p.deleted,
                    example["deleted"].as_bool().unwrap_or(false),
                    "{what}"
                );
                assert_eq!(
                    p.repository.full_name,
                    example["repository"]["full_name"].as_str().unwrap()
                );
                assert_eq!(
                    p.repository.clone_url,
                    example["repository"]["clone_url"].as_str().unwrap()
                );
                assert_eq!(p.pusher.name, example["pusher"]["name"].as_str().unwrap());
                let r = example["ref"].as_str().unwrap();
                match &p.git_ref {
                    GitRef::Branch(b) => assert_eq!(format!("refs/heads/{b}"), r),
                    GitRef::Tag(t) => assert_eq!(format!("refs/tags/{t}"), r),
                    GitRef::Other(o) => assert_eq!(o, r),
                }
                assert_eq!(
                    p.commits.len(),
                    example["commits"].as_array().map_or(0, Vec::len)
                );
                assert_eq!(p.head_commit.is_some(), example["head_commit"].is_object());
                if p.deleted {
                    assert_eq!(p.payload_files(), Some(vec![]), "{what}");
                } else if !p.commits.is_empty() {
                    let mut expected: Vec<String> = example["commits"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .flat_map(|c| {
                            ["added", "modified", "removed"]
                                .into_iter()
                                .flat_map(move |k| c[k].as_array().cloned().unwrap_or_default())
                        })
                        .map(|f| f.as_str().unwrap().to_string())
                        .collect();
                    expected.sort();
                    expected.dedup();
                    assert_eq!(p.payload_files(), Some(expected), "{what}");
                } else {
                    assert_eq!(p.payload_files(), None, "{what}: no commits listed");
                }
            }
            ("pull_request", VcsEvent::PullRequest(p)) => {
                let pr = &example["pull_request"];
                assert_eq!(p.number, example["number"].as_u64().unwrap(), "{what}");
                assert_eq!(
                    p.action.as_str(),
                    example["action"].as_str().unwrap(),
                    "{what}"
                );
                assert_eq!(p.head.sha, pr["head"]["sha"].as_str().unwrap());
                assert_eq!(p.head.branch, pr["head"]["ref"].as_str().unwrap());
                assert_eq!(p.base.branch, pr["base"]["ref"].as_str().unwrap());
                assert_eq!(p.title, pr["title"].as_str().unwrap());
                assert_eq!(p.draft, pr["draft"].as_bool().unwrap_or(false));
                assert_eq!(p.merged, pr["merged"].as_bool().unwrap_or(false));
                assert_eq!(
                    p.author.as_ref().map(|a| a.login.as_str()),
                    pr["user"]["login"].as_str()
                );
                let labels: Vec<&str> = pr["labels"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| l["name"].as_str().unwrap())
                    .collect();
                assert_eq!(p.labels, labels, "{what}");
                let same_repo = pr["head"]["repo"]["full_name"] == pr["base"]["repo"]["full_name"];
                assert_eq!(p.fork, !same_repo, "{what}");
                if pr["mergeable"].is_null() {
                    assert_eq!(p.mergeable, None, "{what}");
                }
                if example["action"] == "labeled" || example["action"] == "unlabeled" {
                    assert_eq!(
                        p.label.as_deref(),
                        example["label"]["name"].as_str(),
                        "{what}"
                    );
                }
            }
            ("issue_comment", VcsEvent::Ignored(i)) => {
                // The package's examples are all comments on plain issues.
                assert!(example["issue"].get("pull_request").is_none(), "{what}");
                assert!(
                    i.reason.contains("not a pull request"),
                    "{what}: {}",
                    i.reason
                );
            }
            (_, other) => panic!("{what}: unexpected {other:?}"),
        }
    }
    for ev in ["push", "pull_request", "issue_comment", "ping"] {
        assert!(
            counts.get(ev).copied().unwrap_or(0) > 0,
            "no {ev} example found"
        );
    }
}

#[test]
fn tampered_bodies_are_rejected() {
    for (version, event, example) in examples() {
        let body = serde_json::to_vec(&example).unwrap();
        let sig = github_signature(SECRET, &body);
        let hook = Webhook::from_headers(&headers(&event, &sig, "d")).unwrap();
        // Flip one byte in the middle: a single-bit forgery must fail.
        let mut tampered = body.clone();
        let mid = tampered.len() / 2;
        tampered[mid] ^= 0x01;
        let err = hook.verify(SECRET, &tampered).expect_err("tampered body");
        assert!(
            matches!(err, VcsError::BadSignature { .. }),
            "{version} {event}: {err}"
        );
        // Right body, wrong secret.
        let err = hook
            .verify(b"another secret", &body)
            .expect_err("wrong secret");
        assert!(
            matches!(err, VcsError::BadSignature { .. }),
            "{version} {event}: {err}"
        );
    }
}

#[test]
fn missing_signature_is_distinct_from_bad() {
    let mut h = HeaderMap::new();
    h.insert("X-GitHub-Event", HeaderValue::from_static("ping"));
    let hook = Webhook::from_headers(&h).unwrap();
    let err = hook.verify(SECRET, b"{}").expect_err("unsigned");
    assert!(matches!(err, VcsError::MissingSignature { .. }), "{err}");
    assert!(err.is_client_error());
    assert!(matches!(
        Webhook::from_headers(&HeaderMap::new()),
        Err(VcsError::MissingEventHeader)
    ));
}

#[test]
fn comment_on_a_pull_request() {
    // GitHub marks an issue that is a pull request with an `issue.pull_request` object.
    let (_, _, mut example) = examples()
        .into_iter()
        .find(|(_, e, x)| e == "issue_comment" && x["action"] == "created")
        .expect("a created issue_comment example");
    let number = example["issue"]["number"].as_u64().unwrap();
    example["issue"]["pull_request"] = serde_json::json!({
        "url": format!("https://api.github.com/repos/Codertocat/Hello-World/pulls/{number}"),
        "html_url": format!("https://github.com/Codertocat/Hello-World/pull/{number}"),
        "diff_url": null, "patch_url": null, "merged_at": null
    });
    example["comment"]["body"] = Value::from("/cairn unlock");
    let body = serde_json::to_vec(&example).unwrap();
    match parse(Provider::GitHub, "issue_comment", &body).expect("parse") {
        VcsEvent::PullRequestComment(c) => {
            assert_eq!(c.pr_number, number);
            assert_eq!(c.body, "/cairn unlock");
            assert_eq!(
                c.author.login,
                example["comment"]["user"]["login"].as_str().unwrap()
            );
            assert_eq!(c.pr_title, example["issue"]["title"].as_str().unwrap());
            assert!(c.pull_request.is_none());
        }
        other => panic!("unexpected {other:?}"),
    }
    // Edits of a comment on a pull request are acknowledged, not acted on.
    example["action"] = Value::from("edited");
    let body = serde_json::to_vec(&example).unwrap();
    assert!(matches!(
        parse(Provider::GitHub, "issue_comment", &body).unwrap(),
        VcsEvent::Ignored(_)
    ));
}

#[test]
fn merged_close_and_forks() {
    let (_, _, mut example) = examples()
        .into_iter()
        .find(|(_, e, x)| e == "pull_request" && x["action"] == "closed")
        .expect("a closed pull_request example");
    example["pull_request"]["merged"] = Value::from(true);
    example["pull_request"]["head"]["repo"]["full_name"] = Value::from("prankster/Hello-World");
    example["pull_request"]["head"]["repo"]["owner"]["login"] = Value::from("prankster");
    let body = serde_json::to_vec(&example).unwrap();
    let VcsEvent::PullRequest(p) = parse(Provider::GitHub, "pull_request", &body).unwrap() else {
        panic!("not a pull request")
    };
    assert_eq!(p.action, PrAction::Closed);
    assert!(p.merged && p.closed && p.fork);
    assert_eq!(p.head.owner, "prankster");
    let docs = cairn_vcs::PushPolicyDocs::for_pull_request(&p, &Default::default());
    let pr = docs.pull_request.expect("pull_request doc");
    assert_eq!(pr.action, "merged");
    assert_eq!(pr.head_owner, "prankster");
    // Spacelift's `push` of a merge event is the merge commit, on the base branch.
    let merge_sha = example["pull_request"]["merge_commit_sha"]
        .as_str()
        .unwrap();
    assert_eq!(p.merge_commit.as_deref(), Some(merge_sha));
    assert_eq!(docs.hash, merge_sha);
    assert_eq!(docs.push.branch, p.base.branch);
    assert_eq!(pr.head.branch, p.head.branch);
    // Closed without merging: the head, even though GitHub names a (test) merge commit.
    example["pull_request"]["merged"] = Value::from(false);
    let body = serde_json::to_vec(&example).unwrap();
    let VcsEvent::PullRequest(unmerged) = parse(Provider::GitHub, "pull_request", &body).unwrap()
    else {
        panic!("not a pull request")
    };
    let docs = cairn_vcs::PushPolicyDocs::for_pull_request(&unmerged, &Default::default());
    assert_eq!(docs.pull_request.unwrap().action, "closed");
    assert_eq!(docs.hash, unmerged.head.sha);
    assert_eq!(docs.push.branch, unmerged.head.branch);

    // A deleted fork leaves `head.repo` null.
    example["pull_request"]["head"]["repo"] = Value::Null;
    let body = serde_json::to_vec(&example).unwrap();
    let VcsEvent::PullRequest(p) = parse(Provider::GitHub, "pull_request", &body).unwrap() else {
        panic!("not a pull request")
    };
    assert!(p.fork);
    assert_eq!(
        p.head.owner,
        example["pull_request"]["head"]["user"]["login"]
            .as_str()
            .unwrap()
    );
}

#[test]
fn unknown_events_and_malformed_bodies_are_distinct_errors() {
    let star = br#"{"action":"created","starred_at":null}"#;
    let err = parse(Provider::GitHub, "star", star).expect_err("unknown");
    assert!(
        matches!(err, VcsError::UnknownEvent { ref event, .. } if event == "star"),
        "{err}"
    );
    assert!(err.to_string().contains("star"));

    let err = parse(Provider::GitHub, "push", b"{not json").expect_err("malformed");
    assert!(matches!(err, VcsError::MalformedPayload { .. }), "{err}");
    assert!(err.to_string().contains("line 1"), "{err}");

    // Valid JSON without what a push must have.
    let err = parse(Provider::GitHub, "push", br#"{"before":"a","after":"b"}"#).expect_err("shape");
    assert!(matches!(err, VcsError::MalformedPayload { .. }), "{err}");
    assert!(err.to_string().contains("ref"), "{err}");
}
