//! The shared conformance suite on PostgreSQL: every test gets its own schema in the database
//! named by `CAIRN_TEST_DATABASE_URL`, so the tests run in parallel without seeing each other.

/// The server to test against. Missing is an error, not a skip: CI must run these tests
/// (`cargo xtask test` starts a throwaway server and sets the variable).
fn database_url() -> String {
    std::env::var("CAIRN_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "CAIRN_TEST_DATABASE_URL is not set: run the PostgreSQL tests with `cargo xtask test` \
             (or `cargo xtask pg -- cargo test -p cairn-store-postgres`), or set CAIRN_SKIP_PG=1 \
             to skip them while iterating locally"
        )
    })
}

/// Skipped only on explicit request, and only when no database is configured.
fn skip() -> bool {
    let skip = std::env::var_os("CAIRN_TEST_DATABASE_URL").is_none()
        && std::env::var("CAIRN_SKIP_PG").as_deref() == Ok("1");
    if skip {
        eprintln!("CAIRN_SKIP_PG=1: skipping a PostgreSQL conformance test");
    }
    skip
}

async fn fresh_store() -> std::sync::Arc<dyn cairn_store::Store> {
    let schema = format!("conformance_{}", uuid::Uuid::new_v4().simple());
    std::sync::Arc::new(
        cairn_store_postgres::PostgresStore::connect_in_schema(&database_url(), &schema)
            .await
            .unwrap(),
    )
}

cairn_store::conformance_tests!(fresh_store, skip_if = skip);
