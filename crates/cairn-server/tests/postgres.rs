//! The server on PostgreSQL: a tracked run from trigger to apply, in a schema of its own in the
//! database named by CAIRN_TEST_DATABASE_URL (`cargo xtask test` provides one). Without it the
//! test fails, unless CAIRN_SKIP_PG=1 says PostgreSQL is deliberately absent.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cairn_proto::agent::v1 as apb;
use cairn_proto::v1 as pb;
use common::*;

fn database_url() -> Option<String> {
    match std::env::var("CAIRN_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CAIRN_SKIP_PG").as_deref() == Ok("1") => None,
        _ => panic!(
            "CAIRN_TEST_DATABASE_URL is not set: run with `cargo xtask test` (or \
             `cargo xtask pg -- cargo test -p cairn-server`), or set CAIRN_SKIP_PG=1"
        ),
    }
}

#[tokio::test]
async fn a_tracked_run_goes_from_trigger_to_apply_on_postgres() {
    let Some(url) = database_url() else {
        eprintln!("CAIRN_SKIP_PG=1: PostgreSQL test skipped");
        return;
    };
    let schema = format!("cairn_server_{}", uuid::Uuid::new_v4().simple());
    let store = cairn_store_postgres::PostgresStore::connect_in_schema(&url, &schema)
        .await
        .unwrap();
    let s = TestServer::start_on(Duration::from_secs(30), Some(Arc::new(store))).await;
    s.stack("app", false, SHA_A).await;
    let mut agent = TestAgent::connect(&s, 1).await;
    let run = s.trigger("app", pb::RunType::Tracked).await;
    let lease = agent.lease().await;
    agent.plan_through(&lease, &["aws_s3_bucket.a"]).await;
    let stored = agent.upload(&lease, b"sealed workspace").await.unwrap();
    agent
        .event(
            &lease,
            apb::job_event::Event::WorkspaceStored(apb::WorkspaceStored {
                artifact_id: stored.artifact_id,
                sha256: stored.sha256,
            }),
        )
        .await;
    s.wait_state(&run.id, pb::RunState::Unconfirmed).await;
    s.runs(&s.admin)
        .confirm_run(pb::ConfirmRunRequest {
            run_id: run.id.clone(),
        })
        .await
        .unwrap();
    let apply = agent.lease().await;
    let (data, _) = agent.download(&apply).await.unwrap();
    assert_eq!(data, b"sealed workspace");
    agent.apply_ok(&apply).await;
    s.wait_state(&run.id, pb::RunState::Finished).await;
}

/// Two replicas on one PostgreSQL schema (each with its own connection pool, sharing the data
/// directory for the master key) working through the same deliveries at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_postgres_create_one_run_per_commit() {
    let Some(url) = database_url() else {
        eprintln!("CAIRN_SKIP_PG=1: PostgreSQL test skipped");
        return;
    };
    let schema = format!("cairn_server_{}", uuid::Uuid::new_v4().simple());
    let connect = || async {
        Arc::new(
            cairn_store_postgres::PostgresStore::connect_in_schema(&url, &schema)
                .await
                .unwrap(),
        )
    };
    let a = TestServer::start_on(Duration::from_secs(30), Some(connect().await)).await;
    let b = cairn_server::Server::builder(config(a.dir.path(), Duration::from_secs(30)))
        .store(connect().await)
        .build()
        .await
        .unwrap();
    replicas::replicas_process_the_same_events(&[&a.state, &b.state()], 12).await;
}
