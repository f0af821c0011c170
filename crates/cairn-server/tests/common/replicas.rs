//! Several server replicas on one database handling the same VCS deliveries: each stored
//! event is processed by every replica at once, as when two replicas' processors pick up the
//! same backlog, and the store must still give each stack one run per (commit SHA, run type).

use std::path::PathBuf;

use cairn_server::state::AppState;
use cairn_store::VcsEventRecord;
use serde_json::Value;

/// The first `push` example of `@octokit/webhooks-examples` that lists commits.
pub fn octokit_push() -> Value {
    let tools = std::env::var_os("CAIRN_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools")
        });
    let path = tools.join("node/node_modules/@octokit/webhooks-examples/api.github.com/index.json");
    let text = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: run `cargo xtask provision` (it installs @octokit/webhooks-examples)",
            path.display()
        )
    });
    let index: Value = serde_json::from_slice(&text).unwrap();
    index
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == "push")
        .flat_map(|e| e["examples"].as_array().unwrap().clone())
        .find(|x| x["commits"].as_array().is_some_and(|c| !c.is_empty()))
        .expect("a push example with commits")
}

/// Stores `pushes` deliveries of one repository (`acme/infra`, three stacks on it) through
/// replica 0's store without waking anyone, then runs every replica's processor on them at
/// the same time. Each push is a new commit on `main` touching the stacks' root, so each
/// stack must end with exactly one tracked run per commit.
pub async fn replicas_process_the_same_events(replicas: &[&AppState], pushes: usize) {
    let store = &replicas[0].store;
    store
        .create_vcs_integration(cairn_store::VcsIntegration {
            id: "gh".into(),
            provider: "GITHUB".into(),
            created_at: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let stacks = ["r1", "r2", "r3"];
    for id in stacks {
        store
            .create_stack(
                cairn_core::Stack {
                    id: id.into(),
                    name: id.into(),
                    repository: "acme/infra".into(),
                    branch: "main".into(),
                    vendor: "terraform".into(),
                    vcs_integration_id: "gh".into(),
                    state: "NONE".into(),
                    ..Default::default()
                },
                Vec::new(),
            )
            .await
            .unwrap();
    }
    let example = octokit_push();
    let mut shas = Vec::new();
    for i in 0..pushes {
        let sha = format!("{:040x}", 0xabc000 + i);
        let mut p = example.clone();
        p["ref"] = Value::from("refs/heads/main");
        p["after"] = Value::from(sha.clone());
        p["commits"][0]["id"] = Value::from(sha.clone());
        p["commits"][0]["modified"] = serde_json::json!(["main.tf"]);
        p["head_commit"] = p["commits"][0].clone();
        p["repository"]["full_name"] = Value::from("acme/infra");
        store
            .add_vcs_event(VcsEventRecord {
                id: format!("evt-{i}"),
                integration_id: "gh".into(),
                provider: "github".into(),
                delivery_id: format!("d-{i}"),
                event_type: "push".into(),
                payload: serde_json::to_vec(&p).unwrap(),
                received_at: 10 + i as i64,
                processed_at: 0,
                result: String::new(),
            })
            .await
            .unwrap();
        shas.push(sha);
    }
    let barrier = tokio::sync::Barrier::new(replicas.len());
    let work = replicas.iter().map(|state| {
        let barrier = &barrier;
        async move {
            barrier.wait().await;
            cairn_server::vcs::ingest::process_pending(state)
                .await
                .unwrap();
        }
    });
    futures::future::join_all(work).await;
    for id in stacks {
        let runs = store
            .list_runs(id, &cairn_store::Page::first(cairn_store::Page::MAX_SIZE))
            .await
            .unwrap()
            .items;
        let mut commits: Vec<&str> = runs.iter().map(|r| r.commit.hash.as_str()).collect();
        commits.sort();
        assert_eq!(
            commits, shas,
            "stack {id}: one tracked run per pushed commit, whichever replica created it"
        );
        assert!(runs
            .iter()
            .all(|r| r.run_type == cairn_core::RunType::Tracked));
    }
    assert!(store.unprocessed_vcs_events().await.unwrap().is_empty());
}
