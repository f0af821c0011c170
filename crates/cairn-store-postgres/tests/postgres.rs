//! What only the PostgreSQL backend promises: schema-scoped stores and the benchmark on it.

use std::sync::Arc;

use cairn_core::CoreError;
use cairn_store::bench::{transitions_per_second, BenchOptions, PATH};
use cairn_store::conformance::stack;
use cairn_store::{Store, StoreError};
use cairn_store_postgres::PostgresStore;

/// `None` only when CAIRN_SKIP_PG=1 and no database is configured; otherwise a missing URL fails.
fn database_url() -> Option<String> {
    match std::env::var("CAIRN_TEST_DATABASE_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var("CAIRN_SKIP_PG").as_deref() == Ok("1") => None,
        Err(_) => panic!(
            "CAIRN_TEST_DATABASE_URL is not set: run the PostgreSQL tests with `cargo xtask test`, \
             or set CAIRN_SKIP_PG=1 to skip them while iterating locally"
        ),
    }
}

fn schema() -> String {
    format!("pgtest_{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn schema_names_are_checked_before_anything_is_sent() {
    for bad in [
        "",
        "Upper",
        "1abc",
        "a-b",
        "a;drop schema public",
        &"x".repeat(64),
    ] {
        match PostgresStore::connect_in_schema("postgres://nobody@127.0.0.1:1/none", bad).await {
            Err(StoreError::Core(CoreError::InvalidArgument { field, .. })) => {
                assert_eq!(field, "schema")
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn stores_in_different_schemas_are_independent() {
    let Some(url) = database_url() else { return };
    let a = PostgresStore::connect_in_schema(&url, &schema())
        .await
        .unwrap();
    let b = PostgresStore::connect_in_schema(&url, &schema())
        .await
        .unwrap();
    a.create_stack(stack("same-id", &[]), vec![]).await.unwrap();
    b.create_stack(stack("same-id", &[]), vec![]).await.unwrap();
    a.delete_stack("same-id").await.unwrap();
    assert_eq!(b.all_stacks().await.unwrap().len(), 1);
    assert!(a.all_stacks().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchmark_walks_every_run_to_finished() {
    let Some(url) = database_url() else { return };
    let store: Arc<dyn Store> = Arc::new(
        PostgresStore::connect_in_schema(&url, &schema())
            .await
            .unwrap(),
    );
    let opts = BenchOptions {
        runs: 40,
        concurrency: 8,
        stacks: 2,
    };
    let figures = transitions_per_second(store.clone(), &opts).await.unwrap();
    assert_eq!(figures.transitions, 40 * PATH.len());
    for s in store.all_stacks().await.unwrap() {
        assert!(store.unfinished_runs(&s.id).await.unwrap().is_empty());
    }
}

/// Two stores (two pools) on one schema stand for two server replicas on one database: the
/// database, not the process, keeps one run per dedup key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_database_create_one_run_per_dedup_key() {
    let Some(url) = database_url() else { return };
    let schema = schema();
    // One after the other: the second finds the schema migrated.
    let a: Arc<dyn Store> = Arc::new(
        PostgresStore::connect_in_schema(&url, &schema)
            .await
            .unwrap(),
    );
    let b: Arc<dyn Store> = Arc::new(
        PostgresStore::connect_in_schema(&url, &schema)
            .await
            .unwrap(),
    );
    cairn_store::conformance::dedup_race(&[a, b]).await;
}
