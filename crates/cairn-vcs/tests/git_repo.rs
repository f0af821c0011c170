//! Affected files and pull-request facts computed with the real git CLI in real repositories.

use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_core::Stack;
use cairn_policy::input::StackInfo;
use cairn_policy::{CompiledPolicy, Decision, PolicyInput, PolicyKind, PolicyOptions};
use cairn_vcs::git::{changed_files, commit_files, commit_meta, is_ancestor, merge_base_diff};
use cairn_vcs::{
    affects, parse, push_affected_files, PrFacts, Provider, PushPolicyDocs, VcsError, VcsEvent,
};
use serde_json::json;

struct Repo {
    _dir: tempfile::TempDir,
    path: PathBuf,
    /// Fake clock so that author dates are known.
    tick: u64,
}

impl Repo {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("work");
        std::fs::create_dir(&path).unwrap();
        let r = Repo {
            _dir: dir,
            path,
            tick: 1_700_000_000,
        };
        r.git(&["init", "-q", "-b", "main"]);
        r
    }

    fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.path)
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Ada Lovelace")
            .env("GIT_AUTHOR_EMAIL", "ada@example.com")
            .env("GIT_COMMITTER_NAME", "Ada Lovelace")
            .env("GIT_COMMITTER_EMAIL", "ada@example.com")
            .env("GIT_AUTHOR_DATE", format!("@{} +0000", self.tick))
            .env("GIT_COMMITTER_DATE", format!("@{} +0000", self.tick))
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn write(&self, file: &str, content: &str) {
        let p = self.path.join(file);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn commit(&mut self, message: &str) -> String {
        self.tick += 60;
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn diffs_between_commits() {
    let mut r = Repo::new();
    r.write("infra/main.tf", "a");
    r.write("README.md", "hello");
    let root = r.commit("root");
    assert_eq!(
        commit_files(&r.path, &root).unwrap(),
        sorted(&["README.md", "infra/main.tf"])
    );

    r.write("network/vpc.tf", "vpc");
    r.write("docs/with space é.md", "x");
    let c1 = r.commit("network");
    std::fs::rename(r.path.join("README.md"), r.path.join("README.txt")).unwrap();
    let c2 = r.commit("rename");
    assert_eq!(
        changed_files(&r.path, &root, &c2).unwrap(),
        sorted(&[
            "README.md",
            "README.txt",
            "docs/with space é.md",
            "network/vpc.tf"
        ]),
        "renames are a removal and an addition; odd names come through whole"
    );
    assert_eq!(
        commit_files(&r.path, &c1).unwrap(),
        sorted(&["docs/with space é.md", "network/vpc.tf"])
    );
    assert!(changed_files(&r.path, &c2, &c2).unwrap().is_empty());

    // A bare clone answers the same.
    let bare = r.path.parent().unwrap().join("bare.git");
    let out = Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&r.path)
        .arg(&bare)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        changed_files(&bare, &root, &c2).unwrap(),
        changed_files(&r.path, &root, &c2).unwrap()
    );

    let meta = commit_meta(&r.path, &c1).unwrap();
    assert_eq!(meta.sha, c1);
    assert_eq!(meta.author_name, "Ada Lovelace");
    assert_eq!(meta.author_email, "ada@example.com");
    assert_eq!(meta.message, "network");
    assert_eq!(meta.authored_at_ns, 1_700_000_120 * 1_000_000_000);

    // Errors: unknown commits fail in git, option-like revisions never reach it.
    let err =
        changed_files(&r.path, &root, "0123456789abcdef0123456789abcdef01234567").unwrap_err();
    assert!(matches!(err, VcsError::Git { .. }), "{err}");
    let err = changed_files(&r.path, "--output=/tmp/pwned", &c2).unwrap_err();
    assert!(matches!(err, VcsError::InvalidRevision(_)), "{err}");
    let err = changed_files(Path::new("/nonexistent/repo"), &root, &c2).unwrap_err();
    assert!(matches!(err, VcsError::Git { .. }), "{err}");
}

/// A GitHub push payload for `before..after` listing `listed` commits (each with `files`).
fn github_push(before: &str, after: &str, listed: &[(String, Vec<&str>)]) -> Vec<u8> {
    let commits: Vec<_> = listed
        .iter()
        .map(|(id, files)| {
            json!({
                "id": id, "tree_id": id, "distinct": true, "message": format!("commit {id}"),
                "timestamp": "2023-11-14T22:15:20Z", "url": "https://example.invalid",
                "author": {"name": "Ada Lovelace", "email": "ada@example.com", "username": "ada"},
                "committer": {"name": "Ada Lovelace", "email": "ada@example.com", "username": "ada"},
                "added": [], "removed": [], "modified": files,
            })
        })
        .collect();
    let head = commits.last().cloned().unwrap_or(serde_json::Value::Null);
    serde_json::to_vec(&json!({
        "ref": "refs/heads/main", "before": before, "after": after,
        "created": false, "deleted": false, "forced": false, "base_ref": null,
        "compare": "https://example.invalid", "commits": commits, "head_commit": head,
        "repository": {"id": 1, "name": "infra", "full_name": "acme/infra",
                        "owner": {"login": "acme", "name": "acme"},
                        "clone_url": "https://example.invalid/acme/infra.git",
                        "html_url": "https://example.invalid/acme/infra", "default_branch": "main"},
        "pusher": {"name": "ada", "email": "ada@example.com"},
        "sender": {"login": "ada"}
    }))
    .unwrap()
}

fn stack(root: &str, globs: &[&str]) -> Stack {
    Stack {
        id: "infra".into(),
        branch: "main".into(),
        project_root: root.into(),
        additional_project_globs: globs.iter().map(|s| s.to_string()).collect(),
        ..Stack::default()
    }
}

#[test]
fn truncated_push_is_completed_with_git_and_evaluated() {
    let mut r = Repo::new();
    r.write("README.md", "hello");
    let before = r.commit("root");
    // 25 commits: GitHub would list at most 20 of them.
    let mut shas = Vec::new();
    for i in 0..25 {
        let file = match i {
            0 => "network/vpc.tf".to_string(),
            _ => format!("docs/page{i}.md"),
        };
        r.write(&file, &format!("v{i}"));
        let sha = r.commit(&format!("change {i}"));
        if i >= 5 {
            shas.push(sha);
        }
    }
    let after = r.git(&["rev-parse", "HEAD"]);
    // What the payload lists is deliberately incomplete: only git knows the real files.
    let listed: Vec<(String, Vec<&str>)> = shas
        .into_iter()
        .enumerate()
        .map(|(i, sha)| {
            (
                sha,
                vec![if i % 2 == 0 { "docs/x.md" } else { "docs/y.md" }],
            )
        })
        .collect();
    assert_eq!(listed.len(), 20);
    let body = github_push(&before, &after, &listed);
    let VcsEvent::Push(push) = parse(Provider::GitHub, "push", &body).unwrap() else {
        panic!("not a push")
    };
    assert_eq!(
        push.payload_files(),
        None,
        "20 listed commits may be a truncated list"
    );
    let files = push_affected_files(&push, Some(&r.path)).unwrap();
    assert!(files.contains(&"network/vpc.tf".to_string()), "{files:?}");
    assert_eq!(files.len(), 25);

    // network/vpc.tf only appears in a commit the payload dropped: only git sees it.
    assert!(affects(&stack("network", &[]), &files));
    assert!(!affects(&stack("net", &[]), &files));
    assert!(affects(&stack("app", &["docs/*.md"]), &files));
    assert!(!affects(&stack("app", &[]), &files));

    // The push-policy input, evaluated by a real compiled policy.
    let docs = PushPolicyDocs::for_push(&push, files);
    assert_eq!(docs.push.author, "ada");
    let input = docs.into_input(
        StackInfo {
            id: "infra".into(),
            branch: "main".into(),
            project_root: Some("network".into()),
            ..StackInfo::default()
        },
        vec![],
        None,
    );
    let json = input.to_json().unwrap();
    assert_eq!(json["push"]["hash"], after.as_str());
    assert_eq!(json["pull_request"], serde_json::Value::Null);
    let policy = CompiledPolicy::compile(
        "push",
        1,
        PolicyKind::Push,
        &format!(
            r#"package spacelift
track {{
  input.push.branch == input.stack.branch
  input.push.hash == "{after}"
  some i
  startswith(input.push.affected_files[i], concat("", [input.stack.project_root, "/"]))
}}
"#
        ),
        PolicyOptions::default(),
    )
    .expect("compile");
    let Decision::Push(d) = policy.decide(&input).expect("evaluate") else {
        panic!("not a push decision")
    };
    assert!(d.track && !d.propose && !d.ignore);
}

#[test]
fn new_branch_without_listed_commits_uses_the_head_commit() {
    let mut r = Repo::new();
    r.write("README.md", "hello");
    r.commit("root");
    r.write("network/a.tf", "a");
    let head = r.commit("add a");
    let body = github_push("0000000000000000000000000000000000000000", &head, &[]);
    let VcsEvent::Push(push) = parse(Provider::GitHub, "push", &body).unwrap() else {
        panic!("not a push")
    };
    assert!(push.created);
    assert_eq!(
        push_affected_files(&push, Some(&r.path)).unwrap(),
        ["network/a.tf"]
    );
}

#[test]
fn pull_request_facts_from_git() {
    let mut r = Repo::new();
    r.write("README.md", "hello");
    r.write("network/vpc.tf", "v1");
    r.commit("root");
    r.git(&["checkout", "-q", "-b", "feature"]);
    r.write("network/vpc.tf", "v2");
    r.write("network/subnets.tf", "s");
    let head = r.commit("widen the vpc");
    r.git(&["checkout", "-q", "main"]);
    r.write("app/server.go", "package main");
    let base = r.commit("unrelated work on main");

    // Only the feature's own changes, not what main gained since the fork point.
    let diff = merge_base_diff(&r.path, &base, &head).unwrap();
    assert_eq!(diff, sorted(&["network/subnets.tf", "network/vpc.tf"]));
    assert_eq!(
        changed_files(&r.path, &base, &head).unwrap(),
        sorted(&["app/server.go", "network/subnets.tf", "network/vpc.tf"])
    );
    assert!(
        !is_ancestor(&r.path, &base, &head).unwrap(),
        "feature is behind main"
    );

    r.git(&["checkout", "-q", "feature"]);
    r.tick += 60;
    r.git(&["merge", "-q", "--no-edit", "main"]);
    let merged_head = r.git(&["rev-parse", "HEAD"]);
    assert!(is_ancestor(&r.path, &base, &merged_head).unwrap());

    let facts = PrFacts {
        diff: merge_base_diff(&r.path, &base, &merged_head).unwrap(),
        undiverged: Some(is_ancestor(&r.path, &base, &merged_head).unwrap()),
        approved: Some(true),
        head_commit: Some(commit_meta(&r.path, &merged_head).unwrap()),
        ..PrFacts::default()
    };
    let payload = json!({
        "action": "synchronize", "number": 7,
        "before": head, "after": merged_head,
        "pull_request": {
            "title": "Widen the VPC", "user": {"login": "ada"}, "draft": false, "merged": false,
            "state": "open", "labels": [{"name": "deploy"}], "mergeable": true,
            "mergeable_state": "clean", "updated_at": "2023-11-14T22:15:20Z",
            "head": {"ref": "feature", "sha": merged_head, "user": {"login": "ada"},
                     "repo": {"full_name": "acme/infra", "owner": {"login": "acme"}}},
            "base": {"ref": "main", "sha": base, "user": {"login": "acme"},
                     "repo": {"full_name": "acme/infra", "owner": {"login": "acme"}}}
        },
        "repository": {"full_name": "acme/infra", "owner": {"login": "acme"}},
        "sender": {"login": "ada"}
    });
    let VcsEvent::PullRequest(pr) = parse(
        Provider::GitHub,
        "pull_request",
        &serde_json::to_vec(&payload).unwrap(),
    )
    .unwrap() else {
        panic!("not a pull request")
    };
    let docs = PushPolicyDocs::for_pull_request(&pr, &facts);
    let doc = docs.pull_request.as_ref().unwrap();
    assert_eq!(doc.action, "synchronize");
    assert_eq!(doc.id, 7);
    assert_eq!(doc.diff, sorted(&["network/subnets.tf", "network/vpc.tf"]));
    assert!(doc.approved && doc.undiverged && doc.mergeable && !doc.draft);
    assert_eq!(doc.labels, ["deploy"]);
    assert_eq!(doc.head.branch, "feature");
    assert_eq!(doc.base.branch, "main");
    assert_eq!(doc.head.author, "Ada Lovelace");
    assert!(
        doc.head.message.starts_with("Merge branch 'main'"),
        "{}",
        doc.head.message
    );
    assert_eq!(doc.head_owner, "acme");
    assert_eq!(docs.push.affected_files, doc.diff);
    assert_eq!(docs.hash, merged_head);
    assert!(affects(&stack("network", &[]), &doc.diff));
}
