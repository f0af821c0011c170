//! The shared conformance suite on an in-memory database and on a database file.

mod in_memory {
    cairn_store::conformance_tests!(|| async {
        std::sync::Arc::new(
            cairn_store_sqlite::SqliteStore::open_in_memory()
                .await
                .unwrap(),
        ) as std::sync::Arc<dyn cairn_store::Store>
    });
}

mod file {
    cairn_store::conformance_tests!(|| async {
        // A fresh directory in Cargo's per-package scratch space (kept for post-mortems), and a
        // missing subdirectory on purpose: open creates it.
        let dir = tempfile::Builder::new()
            .prefix("sqlite-conformance-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap()
            .keep();
        std::sync::Arc::new(
            cairn_store_sqlite::SqliteStore::open(dir.join("nested/cairn.db"))
                .await
                .unwrap(),
        ) as std::sync::Arc<dyn cairn_store::Store>
    });
}
