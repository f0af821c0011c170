//! What only the SQLite backend promises: a database file that is created on first start,
//! survives a restart and is in WAL mode; and the store benchmark running on it.

use std::sync::Arc;

use cairn_store::bench::{transitions_per_second, BenchOptions, PATH};
use cairn_store::conformance::{run, stack};
use cairn_store::Store;
use cairn_store_sqlite::SqliteStore;

fn scratch() -> std::path::PathBuf {
    tempfile::Builder::new()
        .prefix("sqlite-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
        .keep()
}

#[tokio::test]
async fn the_file_is_created_with_its_directory_and_survives_a_restart() {
    let path = scratch().join("a/b/cairn.db");
    assert!(!path.exists());
    let store = SqliteStore::open(&path).await.unwrap();
    store
        .create_stack(stack("s1", &["x"]), vec![])
        .await
        .unwrap();
    store
        .create_run(run("r1", "s1", cairn_core::RunType::Tracked, 1))
        .await
        .unwrap();
    store.close().await;
    assert!(path.exists());

    let reopened = SqliteStore::open(&path).await.unwrap();
    assert_eq!(reopened.get_stack("s1").await.unwrap().labels, ["x"]);
    assert_eq!(reopened.get_run("r1").await.unwrap().stack_id, "s1");

    // WAL mode is a property of the file: a plain connection sees it.
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!(
        "sqlite://{}",
        path.display()
    ))
    .await
    .unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode.to_lowercase(), "wal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchmark_walks_every_run_to_finished() {
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(scratch().join("bench.db")).await.unwrap());
    let opts = BenchOptions {
        runs: 40,
        concurrency: 4,
        stacks: 3,
    };
    let figures = transitions_per_second(store.clone(), &opts).await.unwrap();
    assert_eq!(figures.transitions, 40 * PATH.len());
    assert!(figures.p50 <= figures.p99 && figures.p99 <= figures.max);
    let stacks = store.all_stacks().await.unwrap();
    assert_eq!(stacks.len(), 3);
    for s in &stacks {
        assert!(store.unfinished_runs(&s.id).await.unwrap().is_empty());
        for r in store
            .list_runs(&s.id, &cairn_store::Page::first(100))
            .await
            .unwrap()
            .items
        {
            assert_eq!(r.state, cairn_core::RunState::Finished);
            assert_eq!(r.states_history.len(), PATH.len() + 1);
        }
    }
}

/// Two stores on one file stand for two server processes: the database, not the process,
/// keeps one run per dedup key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_handles_on_one_file_create_one_run_per_dedup_key() {
    let path = scratch().join("replicas.db");
    let a: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
    let b: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
    cairn_store::conformance::dedup_race(&[a, b]).await;
}
