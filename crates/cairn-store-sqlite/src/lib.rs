//! Store on SQLite, the embedded default.
//!
//! SQLite allows one writer at a time. Rather than letting several pooled connections race for
//! the write lock (and spin in `busy_timeout`), every write goes through one writer connection
//! while reads use a pool of reader connections; in WAL mode readers never wait for the writer.
//! Compare-and-swap updates are single `UPDATE … WHERE version = ?` statements, atomic on their
//! own; multi-statement writes run in `BEGIN IMMEDIATE` so that another process sharing the file
//! cannot interleave between their check and their write.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use cairn_core::{
    ApiKey, CoreError, DispatchView, EnvVar, Lease, LogLine, Nanos, Role, Run, Stack, Worker,
    WorkerPool,
};
use cairn_store::{
    Dedup, Page, PageOut, PolicyRecord, PolicySample, Result, ReviewRecord, Store, StoreError,
};
use cairn_store::{GitRefRecord, VcsEventRecord, VcsIntegration};
use cairn_store::{LockAttempt, StateLock, StateVersion, UnlockOutcome};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::Row;

mod deployments;
mod fanout;
mod notify;
mod policy;
mod tfstate;
mod vcs;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a statement waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Reader connections for a file database.
const READERS: u32 = 4;
/// Log lines returned when the caller asks for 0, and the most ever returned by one read.
const LOG_DEFAULT: u32 = 1_000;
const LOG_MAX: u32 = 10_000;
/// Runs per multi-row INSERT: 13 bound values each, under SQLite's 32,766 variables.
const RUN_ROWS_PER_INSERT: usize = 2_000;

#[derive(Debug, Clone)]
pub struct SqliteStore {
    read: SqlitePool,
    write: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating it and its parent directory if missing) the database file at `path` and
    /// brings its schema up to date.
    pub async fn open(path: impl AsRef<Path>) -> Result<SqliteStore> {
        let path = path.as_ref();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError::Backend(format!("creating {}: {e}", parent.display())))?;
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // In WAL mode NORMAL loses at most the last commits on power loss, never integrity.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(opts.clone())
            .await
            .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
        MIGRATOR.run(&write).await.map_err(migrate_err)?;
        let read = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(opts.create_if_missing(false))
            .await
            .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
        Ok(SqliteStore { read, write })
    }

    /// A private in-memory database (for tests). It lives in one connection that the pool never
    /// closes, shared by readers and the writer, so every caller sees the same data.
    pub async fn open_in_memory() -> Result<SqliteStore> {
        let opts = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(db)?
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts)
            .await
            .map_err(db)?;
        MIGRATOR.run(&pool).await.map_err(migrate_err)?;
        Ok(SqliteStore {
            read: pool.clone(),
            write: pool,
        })
    }

    /// Closes all connections (checkpointing the WAL of a file database).
    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }
}

fn migrate_err(e: sqlx::migrate::MigrateError) -> StoreError {
    StoreError::Backend(format!("migrating the SQLite schema: {e}"))
}

fn db(e: sqlx::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn is_unique(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

fn is_foreign_key(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_foreign_key_violation())
}

/// Maps a failed insert: duplicate key → AlreadyExists, missing parent → NotFound.
fn insert_err(
    kind: &'static str,
    id: &str,
    parent: (&'static str, &str),
) -> impl FnOnce(sqlx::Error) -> StoreError {
    let (id, parent_kind, parent_id) = (id.to_string(), parent.0, parent.1.to_string());
    move |e| {
        if is_unique(&e) {
            StoreError::AlreadyExists { kind, id }
        } else if is_foreign_key(&e) {
            StoreError::not_found(parent_kind, parent_id)
        } else {
            db(e)
        }
    }
}

/// The order in which [`Store::create_runs_dedup`] writes a batch: the first run of each key,
/// sorted by key; later runs of a key in the batch get whatever the first one got.
struct DedupPlan {
    keys: Vec<String>,
    firsts: Vec<usize>,
    /// For every run, the index of the first run of its key.
    first_of: Vec<usize>,
}

impl DedupPlan {
    fn new(runs: &[Run]) -> DedupPlan {
        let keys: Vec<String> = runs.iter().map(Run::dedup_key).collect();
        let mut seen = std::collections::HashMap::new();
        let first_of: Vec<usize> = (0..runs.len())
            .map(|i| *seen.entry(keys[i].as_str()).or_insert(i))
            .collect();
        let mut firsts: Vec<usize> = (0..runs.len()).filter(|&i| first_of[i] == i).collect();
        firsts.sort_by(|&a, &b| keys[a].cmp(&keys[b]));
        DedupPlan {
            keys,
            firsts,
            first_of,
        }
    }

    fn finish(&self, done: Vec<Option<Dedup>>) -> Vec<Dedup> {
        (0..done.len())
            .map(|i| {
                let first = self.first_of[i];
                match &done[first] {
                    Some(d) if first == i => d.clone(),
                    Some(d) => Dedup::Existing(d.run().clone()),
                    None => unreachable!("every first run of a key is written"),
                }
            })
            .collect()
    }
}

fn to_json<T: Serialize + ?Sized>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(format!("encoding: {e}")))
}

fn from_json<T: DeserializeOwned>(kind: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Backend(format!("corrupt {kind} row: {e}")))
}

/// The serde name of a unit enum variant (what the documents store).
fn enum_name<T: Serialize>(v: &T) -> Result<String> {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => Ok(s),
        other => Err(StoreError::Backend(format!(
            "not a unit variant: {other:?}"
        ))),
    }
}

fn enum_parse<T: DeserializeOwned>(kind: &str, s: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|e| StoreError::Backend(format!("corrupt {kind} row: {e}")))
}

fn get<'r, T>(row: &'r SqliteRow, col: &str) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(col).map_err(db)
}

fn run_from(row: &SqliteRow) -> Result<Run> {
    from_json("run", &get::<String>(row, "doc")?)
}

fn stack_from(row: &SqliteRow) -> Result<Stack> {
    from_json("stack", &get::<String>(row, "doc")?)
}

fn pool_from(row: &SqliteRow) -> Result<WorkerPool> {
    Ok(WorkerPool {
        id: get(row, "id")?,
        name: get(row, "name")?,
        labels: from_json("worker pool", &get::<String>(row, "labels")?)?,
        token_hash: get(row, "token_hash")?,
        created_at: get(row, "created_at")?,
    })
}

fn worker_from(row: &SqliteRow) -> Result<Worker> {
    Ok(Worker {
        id: get(row, "id")?,
        pool_id: get(row, "pool_id")?,
        name: get(row, "name")?,
        labels: from_json("worker", &get::<String>(row, "labels")?)?,
        max_jobs: get(row, "max_jobs")?,
        last_heartbeat_at: get(row, "last_heartbeat_at")?,
        connected: get(row, "connected")?,
    })
}

fn lease_from(row: &SqliteRow) -> Result<Lease> {
    Ok(Lease {
        id: get(row, "id")?,
        run_id: get(row, "run_id")?,
        stack_id: get(row, "stack_id")?,
        worker_id: get(row, "worker_id")?,
        kind: enum_parse("lease", &get::<String>(row, "kind")?)?,
        created_at: get(row, "created_at")?,
        heartbeat_at: get(row, "heartbeat_at")?,
    })
}

fn api_key_from(row: &SqliteRow) -> Result<ApiKey> {
    let role: String = get(row, "role")?;
    Ok(ApiKey {
        id: get(row, "id")?,
        login: get(row, "login")?,
        name: get(row, "name")?,
        teams: from_json("api key", &get::<String>(row, "teams")?)?,
        machine: get(row, "machine")?,
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::Backend(format!("corrupt api key row: role {role:?}")))?,
        created_at: get(row, "created_at")?,
        revoked: get(row, "revoked")?,
        secret_hash: get(row, "secret_hash")?,
    })
}

fn log_from(row: &SqliteRow) -> Result<LogLine> {
    let phase: Option<String> = get(row, "phase")?;
    Ok(LogLine {
        seq: get(row, "seq")?,
        timestamp: get(row, "timestamp")?,
        phase: phase.map(|p| enum_parse("log", &p)).transpose()?,
        stream: enum_parse("log", &get::<String>(row, "stream")?)?,
        message: get(row, "message")?,
    })
}

/// Page tokens: stacks page by id, runs by (created_at, id) descending. The `s`/`r` prefix lets
/// a token from one listing be told apart from the other's.
fn stack_cursor(page: &Page) -> Result<String> {
    match &page.token {
        None => Ok(String::new()),
        Some(t) => t
            .strip_prefix("s:")
            .map(str::to_string)
            .ok_or_else(bad_token),
    }
}

fn run_cursor(page: &Page) -> Result<Option<(i64, String)>> {
    let Some(t) = &page.token else {
        return Ok(None);
    };
    let rest = t.strip_prefix("r:").ok_or_else(bad_token)?;
    let (at, id) = rest.split_once(':').ok_or_else(bad_token)?;
    Ok(Some((at.parse().map_err(|_| bad_token())?, id.to_string())))
}

fn bad_token() -> StoreError {
    CoreError::invalid("page_token", "not a token returned by this listing").into()
}

fn log_limit(limit: u32) -> i64 {
    i64::from(match limit {
        0 => LOG_DEFAULT,
        n => n.min(LOG_MAX),
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_stack(&self, mut stack: Stack, env: Vec<EnvVar>) -> Result<Stack> {
        stack.version = 1;
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        sqlx::query("INSERT INTO stacks (id, version, labels, doc) VALUES (?1, ?2, ?3, ?4)")
            .bind(&stack.id)
            .bind(stack.version)
            .bind(to_json(&stack.labels)?)
            .bind(to_json(&stack)?)
            .execute(&mut *tx)
            .await
            .map_err(insert_err("stack", &stack.id, ("stack", "")))?;
        for v in &env {
            sqlx::query(
                "INSERT INTO env_vars (stack_id, name, value, secret) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (stack_id, name) DO UPDATE SET value = excluded.value,
                 secret = excluded.secret",
            )
            .bind(&stack.id)
            .bind(&v.name)
            .bind(&v.value)
            .bind(v.secret)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(stack)
    }

    async fn get_stack(&self, id: &str) -> Result<Stack> {
        let row = sqlx::query("SELECT doc FROM stacks WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.read)
            .await
            .map_err(db)?
            .ok_or_else(|| StoreError::not_found("stack", id))?;
        stack_from(&row)
    }

    async fn list_stacks(&self, labels: &[String], page: &Page) -> Result<PageOut<Stack>> {
        let after = stack_cursor(page)?;
        let limit = page.limit();
        // Every wanted label must be among the stack's labels (exact match).
        let rows = sqlx::query(
            "SELECT doc FROM stacks
             WHERE id > ?1
               AND NOT EXISTS (SELECT 1 FROM json_each(?2) AS w
                               WHERE w.value NOT IN (SELECT value FROM json_each(stacks.labels)))
             ORDER BY id LIMIT ?3",
        )
        .bind(after)
        .bind(to_json(labels)?)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.read)
        .await
        .map_err(db)?;
        let mut items = rows.iter().map(stack_from).collect::<Result<Vec<_>>>()?;
        let next = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|s| format!("s:{}", s.id))
        } else {
            None
        };
        Ok(PageOut { items, next })
    }

    async fn all_stacks(&self) -> Result<Vec<Stack>> {
        sqlx::query("SELECT doc FROM stacks ORDER BY id")
            .fetch_all(&self.read)
            .await
            .map_err(db)?
            .iter()
            .map(stack_from)
            .collect()
    }

    async fn update_stack(&self, mut stack: Stack) -> Result<Stack> {
        let expected = stack.version;
        stack.version = expected + 1;
        let done = sqlx::query(
            "UPDATE stacks SET version = ?1, labels = ?2, doc = ?3 WHERE id = ?4 AND version = ?5",
        )
        .bind(stack.version)
        .bind(to_json(&stack.labels)?)
        .bind(to_json(&stack)?)
        .bind(&stack.id)
        .bind(expected)
        .execute(&self.write)
        .await
        .map_err(db)?;
        if done.rows_affected() == 1 {
            return Ok(stack);
        }
        if self
            .exists("SELECT 1 FROM stacks WHERE id = ?1", &stack.id)
            .await?
        {
            Err(StoreError::Conflict {
                kind: "stack",
                id: stack.id,
                expected,
            })
        } else {
            Err(StoreError::not_found("stack", stack.id))
        }
    }

    async fn update_stacks(&self, stacks: Vec<Stack>) -> Result<Vec<Stack>> {
        self.fanout_update_stacks(stacks).await
    }

    async fn delete_stack(&self, id: &str) -> Result<()> {
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        let found = sqlx::query("SELECT 1 FROM stacks WHERE id = ?1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        if found.is_none() {
            return Err(StoreError::not_found("stack", id));
        }
        let open: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM runs WHERE stack_id = ?1 AND terminal = 0 ORDER BY created_at LIMIT 5",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        if !open.is_empty() {
            return Err(CoreError::FailedPrecondition(format!(
                "stack {id} has unfinished runs ({}); cancel or finish them first",
                open.join(", ")
            ))
            .into());
        }
        // Variables, runs and (through runs) logs go with the stack: ON DELETE CASCADE.
        sqlx::query("DELETE FROM stacks WHERE id = ?1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn set_env_var(&self, stack_id: &str, var: EnvVar) -> Result<()> {
        sqlx::query(
            "INSERT INTO env_vars (stack_id, name, value, secret) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (stack_id, name) DO UPDATE SET value = excluded.value,
             secret = excluded.secret",
        )
        .bind(stack_id)
        .bind(&var.name)
        .bind(&var.value)
        .bind(var.secret)
        .execute(&self.write)
        .await
        .map_err(insert_err("env var", &var.name, ("stack", stack_id)))?;
        Ok(())
    }

    async fn delete_env_var(&self, stack_id: &str, name: &str) -> Result<()> {
        let done = sqlx::query("DELETE FROM env_vars WHERE stack_id = ?1 AND name = ?2")
            .bind(stack_id)
            .bind(name)
            .execute(&self.write)
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found(
                "env var",
                format!("{stack_id}/{name}"),
            ));
        }
        Ok(())
    }

    async fn list_env_vars(&self, stack_id: &str) -> Result<Vec<EnvVar>> {
        let mut tx = self.read.begin().await.map_err(db)?;
        let found = sqlx::query("SELECT 1 FROM stacks WHERE id = ?1")
            .bind(stack_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        if found.is_none() {
            return Err(StoreError::not_found("stack", stack_id));
        }
        let rows = sqlx::query(
            "SELECT name, value, secret FROM env_vars WHERE stack_id = ?1 ORDER BY name",
        )
        .bind(stack_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(EnvVar {
                    name: get(r, "name")?,
                    value: get(r, "value")?,
                    secret: get(r, "secret")?,
                })
            })
            .collect()
    }

    async fn create_run(&self, run: Run) -> Result<Run> {
        sqlx::query(
            "INSERT INTO runs (id, stack_id, deployment, run_type, state, terminal, blocking,
                               prioritized, created_at, version, workflow_id, doc)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )
        .bind(&run.id)
        .bind(&run.stack_id)
        .bind(&run.deployment)
        .bind(run.run_type.as_str())
        .bind(run.state.as_str())
        .bind(run.state.is_terminal())
        .bind(run.run_type.is_blocking())
        .bind(run.prioritized)
        .bind(run.created_at)
        .bind(run.version)
        .bind(&run.workflow_id)
        .bind(to_json(&run)?)
        .execute(&self.write)
        .await
        .map_err(insert_err("run", &run.id, ("stack", &run.stack_id)))?;
        Ok(run)
    }

    async fn create_runs_dedup(&self, runs: Vec<Run>) -> Result<Vec<Dedup>> {
        let plan = DedupPlan::new(&runs);
        if plan.firsts.is_empty() {
            return Ok(Vec::new());
        }
        // Multi-row INSERTs of up to RUN_ROWS_PER_INSERT runs: a push into a monorepo creates
        // thousands of runs, and a statement per run (a round trip to the connection's thread
        // each) dominated it. IMMEDIATE: another process on the same file cannot slip in
        // between the insert that found keys taken and the read of the runs holding them.
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        let mut inserted = std::collections::HashSet::new();
        for chunk in plan.firsts.chunks(RUN_ROWS_PER_INSERT) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO runs (id, stack_id, deployment, run_type, state, terminal, blocking,
                                   prioritized, created_at, version, workflow_id, doc, dedup_key) ",
            );
            let mut docs = Vec::with_capacity(chunk.len());
            for &i in chunk {
                docs.push(to_json(&runs[i])?);
            }
            q.push_values(chunk.iter().zip(docs), |mut b, (&i, doc)| {
                let run = &runs[i];
                b.push_bind(run.id.clone())
                    .push_bind(run.stack_id.clone())
                    .push_bind(run.deployment.clone())
                    .push_bind(run.run_type.as_str())
                    .push_bind(run.state.as_str())
                    .push_bind(run.state.is_terminal())
                    .push_bind(run.run_type.is_blocking())
                    .push_bind(run.prioritized)
                    .push_bind(run.created_at)
                    .push_bind(run.version)
                    .push_bind(run.workflow_id.clone())
                    .push_bind(doc)
                    .push_bind(plan.keys[i].clone());
            });
            q.push(" ON CONFLICT (dedup_key) DO NOTHING RETURNING id");
            match q.build_query_scalar::<String>().fetch_all(&mut *tx).await {
                Ok(ids) => inserted.extend(ids),
                Err(e) => {
                    drop(tx);
                    return Err(self.batch_insert_err(e, &runs, &plan.firsts).await);
                }
            }
        }
        let taken: Vec<&str> = plan
            .firsts
            .iter()
            .filter(|&&i| !inserted.contains(&runs[i].id))
            .map(|&i| plan.keys[i].as_str())
            .collect();
        let mut existing = std::collections::HashMap::new();
        if !taken.is_empty() {
            let rows = sqlx::query(
                "SELECT dedup_key, doc FROM runs
                  WHERE dedup_key IN (SELECT value FROM json_each(?1))",
            )
            .bind(to_json(&taken)?)
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
            for row in &rows {
                existing.insert(get::<String>(row, "dedup_key")?, run_from(row)?);
            }
        }
        tx.commit().await.map_err(db)?;
        let mut done: Vec<Option<Dedup>> = vec![None; runs.len()];
        for &i in &plan.firsts {
            done[i] = Some(if inserted.contains(&runs[i].id) {
                Dedup::Created(runs[i].clone())
            } else {
                let run = existing.remove(&plan.keys[i]).ok_or_else(|| {
                    StoreError::Backend(format!(
                        "run {} was neither inserted nor found by its dedup key {}",
                        runs[i].id, plan.keys[i]
                    ))
                })?;
                Dedup::Existing(run)
            });
        }
        Ok(plan.finish(done))
    }

    async fn get_run(&self, id: &str) -> Result<Run> {
        let row = sqlx::query("SELECT doc FROM runs WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.read)
            .await
            .map_err(db)?
            .ok_or_else(|| StoreError::not_found("run", id))?;
        run_from(&row)
    }

    async fn list_runs(&self, stack_id: &str, page: &Page) -> Result<PageOut<Run>> {
        let limit = page.limit();
        let fetch = i64::from(limit) + 1;
        let rows = match run_cursor(page)? {
            None => sqlx::query(
                "SELECT doc FROM runs WHERE stack_id = ?1
                 ORDER BY created_at DESC, id DESC LIMIT ?2",
            )
            .bind(stack_id)
            .bind(fetch)
            .fetch_all(&self.read)
            .await
            .map_err(db)?,
            Some((at, id)) => sqlx::query(
                "SELECT doc FROM runs WHERE stack_id = ?1 AND (created_at, id) < (?2, ?3)
                 ORDER BY created_at DESC, id DESC LIMIT ?4",
            )
            .bind(stack_id)
            .bind(at)
            .bind(id)
            .bind(fetch)
            .fetch_all(&self.read)
            .await
            .map_err(db)?,
        };
        let mut items = rows.iter().map(run_from).collect::<Result<Vec<_>>>()?;
        let next = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|r| format!("r:{}:{}", r.created_at, r.id))
        } else {
            None
        };
        Ok(PageOut { items, next })
    }

    async fn update_run(&self, run: &Run, expected_version: i64) -> Result<Run> {
        let done = sqlx::query(
            "UPDATE runs SET deployment = ?1, run_type = ?2, state = ?3, terminal = ?4,
                             blocking = ?5, prioritized = ?6, version = ?7, workflow_id = ?8,
                             doc = ?9
             WHERE id = ?10 AND version = ?11",
        )
        .bind(&run.deployment)
        .bind(run.run_type.as_str())
        .bind(run.state.as_str())
        .bind(run.state.is_terminal())
        .bind(run.run_type.is_blocking())
        .bind(run.prioritized)
        .bind(run.version)
        .bind(&run.workflow_id)
        .bind(to_json(run)?)
        .bind(&run.id)
        .bind(expected_version)
        .execute(&self.write)
        .await
        .map_err(db)?;
        if done.rows_affected() == 1 {
            return Ok(run.clone());
        }
        if self
            .exists("SELECT 1 FROM runs WHERE id = ?1", &run.id)
            .await?
        {
            Err(StoreError::Conflict {
                kind: "run",
                id: run.id.clone(),
                expected: expected_version,
            })
        } else {
            Err(StoreError::not_found("run", &run.id))
        }
    }

    async fn unfinished_runs(&self, stack_id: &str) -> Result<Vec<Run>> {
        sqlx::query(
            "SELECT doc FROM runs WHERE stack_id = ?1 AND terminal = 0
             ORDER BY created_at, id",
        )
        .bind(stack_id)
        .fetch_all(&self.read)
        .await
        .map_err(db)?
        .iter()
        .map(run_from)
        .collect()
    }

    async fn unfinished_runs_of(&self, stack_ids: &[String]) -> Result<Vec<Run>> {
        self.fanout_unfinished_runs_of(stack_ids).await
    }

    async fn dispatch_view(&self) -> Result<DispatchView> {
        // One statement, so the waiting runs and the queue heads come from the same snapshot.
        let rows = sqlx::query(
            "SELECT doc, NULL AS stack_id, NULL AS deployment, NULL AS id FROM runs
             WHERE terminal = 0 AND state IN ('QUEUED', 'REPLAN_REQUESTED', 'CONFIRMED')
             UNION ALL
             SELECT NULL, stack_id, deployment, id FROM (
                 SELECT stack_id, deployment, id,
                        ROW_NUMBER() OVER (PARTITION BY stack_id, deployment
                                           ORDER BY created_at, id) AS rn
                 FROM runs WHERE terminal = 0 AND blocking = 1
             ) WHERE rn = 1",
        )
        .fetch_all(&self.read)
        .await
        .map_err(db)?;
        let mut view = DispatchView::default();
        for row in &rows {
            match get::<Option<String>>(row, "doc")? {
                Some(doc) => view.runs.push(from_json("run", &doc)?),
                None => {
                    view.blocking_heads.insert(
                        (get(row, "stack_id")?, get(row, "deployment")?),
                        get(row, "id")?,
                    );
                }
            }
        }
        Ok(view)
    }

    async fn workflow_runs(&self, workflow_id: &str) -> Result<Vec<Run>> {
        sqlx::query("SELECT doc FROM runs WHERE workflow_id = ?1 ORDER BY created_at, id")
            .bind(workflow_id)
            .fetch_all(&self.read)
            .await
            .map_err(db)?
            .iter()
            .map(run_from)
            .collect()
    }

    async fn append_logs(&self, run_id: &str, lines: &[LogLine]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        for l in lines {
            let phase = l.phase.as_ref().map(enum_name).transpose()?;
            // A line the agent re-sends after a reconnect keeps its first copy.
            sqlx::query(
                "INSERT INTO run_logs (run_id, seq, timestamp, phase, stream, message)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (run_id, seq) DO NOTHING",
            )
            .bind(run_id)
            .bind(l.seq)
            .bind(l.timestamp)
            .bind(phase)
            .bind(enum_name(&l.stream)?)
            .bind(&l.message)
            .execute(&mut *tx)
            .await
            .map_err(insert_err("log line", "", ("run", run_id)))?;
        }
        tx.commit().await.map_err(db)
    }

    async fn read_logs(&self, run_id: &str, after_seq: i64, limit: u32) -> Result<Vec<LogLine>> {
        sqlx::query(
            "SELECT seq, timestamp, phase, stream, message FROM run_logs
             WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .bind(run_id)
        .bind(after_seq)
        .bind(log_limit(limit))
        .fetch_all(&self.read)
        .await
        .map_err(db)?
        .iter()
        .map(log_from)
        .collect()
    }

    async fn last_log_seq(&self, run_id: &str) -> Result<i64> {
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM run_logs WHERE run_id = ?1")
            .bind(run_id)
            .fetch_one(&self.read)
            .await
            .map_err(db)
    }

    async fn create_worker_pool(&self, pool: WorkerPool) -> Result<WorkerPool> {
        sqlx::query(
            "INSERT INTO worker_pools (id, name, labels, token_hash, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(&pool.id)
        .bind(&pool.name)
        .bind(to_json(&pool.labels)?)
        .bind(&pool.token_hash)
        .bind(pool.created_at)
        .execute(&self.write)
        .await
        .map_err(insert_err("worker pool", &pool.id, ("worker pool", "")))?;
        Ok(pool)
    }

    async fn get_worker_pool(&self, id: &str) -> Result<WorkerPool> {
        let row = sqlx::query("SELECT * FROM worker_pools WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.read)
            .await
            .map_err(db)?
            .ok_or_else(|| StoreError::not_found("worker pool", id))?;
        pool_from(&row)
    }

    async fn find_worker_pool_by_token_hash(&self, token_hash: &str) -> Result<WorkerPool> {
        let row = sqlx::query("SELECT * FROM worker_pools WHERE token_hash = ?1")
            .bind(token_hash)
            .fetch_optional(&self.read)
            .await
            .map_err(db)?
            // The hash is a credential: never echo it in an error.
            .ok_or_else(|| StoreError::not_found("worker pool", "<by token>"))?;
        pool_from(&row)
    }

    async fn list_worker_pools(&self) -> Result<Vec<WorkerPool>> {
        sqlx::query("SELECT * FROM worker_pools ORDER BY id")
            .fetch_all(&self.read)
            .await
            .map_err(db)?
            .iter()
            .map(pool_from)
            .collect()
    }

    async fn upsert_worker(&self, w: Worker) -> Result<()> {
        sqlx::query(
            "INSERT INTO workers (id, pool_id, name, labels, max_jobs, last_heartbeat_at, connected)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (id) DO UPDATE SET pool_id = excluded.pool_id, name = excluded.name,
                 labels = excluded.labels, max_jobs = excluded.max_jobs,
                 last_heartbeat_at = excluded.last_heartbeat_at, connected = excluded.connected",
        )
        .bind(&w.id)
        .bind(&w.pool_id)
        .bind(&w.name)
        .bind(to_json(&w.labels)?)
        .bind(w.max_jobs)
        .bind(w.last_heartbeat_at)
        .bind(w.connected)
        .execute(&self.write)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn list_workers(&self, pool_id: &str) -> Result<Vec<Worker>> {
        sqlx::query("SELECT * FROM workers WHERE pool_id = ?1 ORDER BY id")
            .bind(pool_id)
            .fetch_all(&self.read)
            .await
            .map_err(db)?
            .iter()
            .map(worker_from)
            .collect()
    }

    async fn create_lease(&self, lease: Lease) -> Result<()> {
        sqlx::query(
            "INSERT INTO leases (id, run_id, stack_id, worker_id, kind, created_at, heartbeat_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(&lease.id)
        .bind(&lease.run_id)
        .bind(&lease.stack_id)
        .bind(&lease.worker_id)
        .bind(enum_name(&lease.kind)?)
        .bind(lease.created_at)
        .bind(lease.heartbeat_at)
        .execute(&self.write)
        .await
        .map_err(insert_err("lease", &lease.id, ("lease", "")))?;
        Ok(())
    }

    async fn get_lease(&self, id: &str) -> Result<Lease> {
        let row = sqlx::query("SELECT * FROM leases WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.read)
            .await
            .map_err(db)?
            .ok_or_else(|| StoreError::not_found("lease", id))?;
        lease_from(&row)
    }

    async fn heartbeat_leases(
        &self,
        worker_id: &str,
        lease_ids: &[String],
        now: Nanos,
    ) -> Result<()> {
        if lease_ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE leases SET heartbeat_at = ?1
             WHERE worker_id = ?2 AND id IN (SELECT value FROM json_each(?3))",
        )
        .bind(now)
        .bind(worker_id)
        .bind(to_json(lease_ids)?)
        .execute(&self.write)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn delete_lease(&self, id: &str) -> Result<()> {
        let done = sqlx::query("DELETE FROM leases WHERE id = ?1")
            .bind(id)
            .execute(&self.write)
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found("lease", id));
        }
        Ok(())
    }

    async fn list_leases(&self) -> Result<Vec<Lease>> {
        sqlx::query("SELECT * FROM leases ORDER BY id")
            .fetch_all(&self.read)
            .await
            .map_err(db)?
            .iter()
            .map(lease_from)
            .collect()
    }

    async fn add_state_version(&self, version: StateVersion) -> Result<StateVersion> {
        self.tf_add_state_version(version).await
    }

    async fn current_state_version(
        &self,
        stack_id: &str,
        deployment: &str,
    ) -> Result<Option<StateVersion>> {
        self.tf_current_state_version(stack_id, deployment).await
    }

    async fn get_state_version(
        &self,
        stack_id: &str,
        deployment: &str,
        serial: i64,
    ) -> Result<StateVersion> {
        self.tf_get_state_version(stack_id, deployment, serial)
            .await
    }

    async fn list_state_versions(
        &self,
        stack_id: &str,
        deployment: &str,
        page: &Page,
    ) -> Result<PageOut<StateVersion>> {
        self.tf_list_state_versions(stack_id, deployment, page)
            .await
    }

    async fn acquire_state_lock(&self, lock: StateLock) -> Result<LockAttempt> {
        self.tf_acquire_state_lock(lock).await
    }

    async fn release_state_lock(
        &self,
        stack_id: &str,
        deployment: &str,
        lock_id: &str,
    ) -> Result<UnlockOutcome> {
        self.tf_release_state_lock(stack_id, deployment, lock_id)
            .await
    }

    async fn get_state_lock(&self, stack_id: &str, deployment: &str) -> Result<Option<StateLock>> {
        self.tf_get_state_lock(stack_id, deployment).await
    }

    async fn force_release_state_locks(&self, run_id: &str) -> Result<Vec<StateLock>> {
        self.tf_force_release_state_locks(run_id).await
    }

    async fn create_api_key(&self, key: ApiKey) -> Result<ApiKey> {
        sqlx::query(
            "INSERT INTO api_keys (id, login, name, teams, machine, role, created_at, revoked,
                                   secret_hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .bind(&key.id)
        .bind(&key.login)
        .bind(&key.name)
        .bind(to_json(&key.teams)?)
        .bind(key.machine)
        .bind(key.role.as_str())
        .bind(key.created_at)
        .bind(key.revoked)
        .bind(&key.secret_hash)
        .execute(&self.write)
        .await
        .map_err(insert_err("api key", &key.id, ("api key", "")))?;
        Ok(key)
    }

    async fn find_api_key_by_hash(&self, secret_hash: &str) -> Result<ApiKey> {
        let row = sqlx::query("SELECT * FROM api_keys WHERE secret_hash = ?1")
            .bind(secret_hash)
            .fetch_optional(&self.read)
            .await
            .map_err(db)?
            .ok_or_else(|| StoreError::not_found("api key", "<by secret>"))?;
        api_key_from(&row)
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKey>> {
        sqlx::query("SELECT * FROM api_keys ORDER BY id")
            .fetch_all(&self.read)
            .await
            .map_err(db)?
            .iter()
            .map(api_key_from)
            .collect()
    }

    async fn revoke_api_key(&self, id: &str) -> Result<()> {
        let done = sqlx::query("UPDATE api_keys SET revoked = 1 WHERE id = ?1")
            .bind(id)
            .execute(&self.write)
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found("api key", id));
        }
        Ok(())
    }

    async fn create_policy(&self, policy: PolicyRecord) -> Result<PolicyRecord> {
        self.policy_create(policy).await
    }

    async fn get_policy(&self, id: &str) -> Result<PolicyRecord> {
        self.policy_get(id).await
    }

    async fn list_policies(
        &self,
        kind: Option<&str>,
        page: &Page,
    ) -> Result<PageOut<PolicyRecord>> {
        self.policy_list(kind, page).await
    }

    async fn all_policies(&self) -> Result<Vec<PolicyRecord>> {
        self.policy_all().await
    }

    async fn update_policy(&self, policy: PolicyRecord) -> Result<PolicyRecord> {
        self.policy_update(policy).await
    }

    async fn delete_policy(&self, id: &str) -> Result<()> {
        self.policy_delete(id).await
    }

    async fn attach_policy(&self, policy_id: &str, stack_id: &str) -> Result<()> {
        self.policy_attach(policy_id, stack_id).await
    }

    async fn detach_policy(&self, policy_id: &str, stack_id: &str) -> Result<()> {
        self.policy_detach(policy_id, stack_id).await
    }

    async fn add_policy_sample(&self, sample: PolicySample, keep: u32) -> Result<()> {
        self.sample_add(sample, keep).await
    }

    async fn get_policy_sample(&self, id: &str) -> Result<PolicySample> {
        self.sample_get(id).await
    }

    async fn list_policy_samples(
        &self,
        policy_id: &str,
        page: &Page,
    ) -> Result<PageOut<PolicySample>> {
        self.sample_list(policy_id, page).await
    }

    async fn add_review(&self, review: ReviewRecord) -> Result<()> {
        self.review_add(review).await
    }

    async fn list_reviews(&self, run_id: &str) -> Result<Vec<ReviewRecord>> {
        self.review_list(run_id).await
    }

    async fn set_run_approval(&self, run_id: &str, state: &str, outcome: &str) -> Result<()> {
        self.approval_set(run_id, state, outcome).await
    }

    async fn run_approval(&self, run_id: &str, state: &str) -> Result<Option<String>> {
        self.approval_get(run_id, state).await
    }

    async fn create_vcs_integration(&self, integration: VcsIntegration) -> Result<VcsIntegration> {
        self.vcs_create_integration(integration).await
    }

    async fn get_vcs_integration(&self, id: &str) -> Result<VcsIntegration> {
        self.vcs_get_integration(id).await
    }

    async fn list_vcs_integrations(&self) -> Result<Vec<VcsIntegration>> {
        self.vcs_list_integrations().await
    }

    async fn add_vcs_event(&self, event: VcsEventRecord) -> Result<VcsEventRecord> {
        self.vcs_add_event(event).await
    }

    async fn get_vcs_event_by_delivery(
        &self,
        integration_id: &str,
        delivery_id: &str,
    ) -> Result<VcsEventRecord> {
        self.vcs_event_by_delivery(integration_id, delivery_id)
            .await
    }

    async fn unprocessed_vcs_events(&self) -> Result<Vec<VcsEventRecord>> {
        self.vcs_unprocessed_events().await
    }

    async fn mark_vcs_event_processed(&self, id: &str, at: Nanos, result: &str) -> Result<()> {
        self.vcs_mark_processed(id, at, result).await
    }

    async fn git_refs(&self, repository: &str) -> Result<Vec<GitRefRecord>> {
        self.vcs_git_refs(repository).await
    }

    async fn set_git_refs(&self, repository: &str, refs: &[GitRefRecord]) -> Result<()> {
        self.vcs_set_git_refs(repository, refs).await
    }

    async fn put_pull_request(&self, pr: cairn_store::PullRequestRecord) -> Result<()> {
        self.vcs_put_pull_request(pr).await
    }

    async fn get_pull_request(
        &self,
        integration_id: &str,
        repository: &str,
        number: i64,
    ) -> Result<Option<cairn_store::PullRequestRecord>> {
        self.vcs_get_pull_request(integration_id, repository, number)
            .await
    }

    async fn create_webhook(
        &self,
        webhook: cairn_store::WebhookRecord,
    ) -> Result<cairn_store::WebhookRecord> {
        self.notify_create_webhook(webhook).await
    }

    async fn get_webhook(&self, id: &str) -> Result<cairn_store::WebhookRecord> {
        self.notify_get_webhook(id).await
    }

    async fn list_webhooks(&self) -> Result<Vec<cairn_store::WebhookRecord>> {
        self.notify_list_webhooks().await
    }

    async fn delete_webhook(&self, id: &str) -> Result<()> {
        self.notify_delete_webhook(id).await
    }

    async fn put_webhook_delivery(
        &self,
        delivery: cairn_store::DeliveryRecord,
        keep: u32,
    ) -> Result<()> {
        self.notify_put_delivery(delivery, keep).await
    }

    async fn list_webhook_deliveries(
        &self,
        webhook_id: &str,
        limit: u32,
    ) -> Result<Vec<cairn_store::DeliveryRecord>> {
        self.notify_list_deliveries(webhook_id, limit).await
    }

    async fn create_deployment(
        &self,
        deployment: cairn_core::Deployment,
    ) -> Result<cairn_core::Deployment> {
        self.dep_create(deployment).await
    }

    async fn get_deployment(&self, stack_id: &str, name: &str) -> Result<cairn_core::Deployment> {
        self.dep_get(stack_id, name).await
    }

    async fn list_deployments(&self, stack_id: &str) -> Result<Vec<cairn_core::Deployment>> {
        self.dep_list(stack_id).await
    }

    async fn update_deployment(
        &self,
        deployment: cairn_core::Deployment,
    ) -> Result<cairn_core::Deployment> {
        self.dep_update(deployment).await
    }

    async fn acquire_deployment_lock(
        &self,
        stack_id: &str,
        name: &str,
        run_id: &str,
    ) -> Result<String> {
        self.dep_lock(stack_id, name, run_id).await
    }

    async fn release_deployment_lock(
        &self,
        stack_id: &str,
        name: &str,
        run_id: &str,
    ) -> Result<bool> {
        self.dep_unlock(stack_id, name, run_id).await
    }

    async fn add_configuration_version(
        &self,
        version: cairn_core::ConfigurationVersion,
    ) -> Result<cairn_core::ConfigurationVersion> {
        self.cv_add(version).await
    }

    async fn get_configuration_version(
        &self,
        stack_id: &str,
        seq: i64,
    ) -> Result<cairn_core::ConfigurationVersion> {
        self.cv_get(stack_id, seq).await
    }

    async fn list_configuration_versions(
        &self,
        stack_id: &str,
        before: i64,
        limit: u32,
    ) -> Result<Vec<cairn_core::ConfigurationVersion>> {
        self.cv_list(stack_id, before, limit).await
    }

    async fn pr_comment_id(&self, stack_id: &str, pull_request: i64) -> Result<Option<i64>> {
        self.notify_pr_comment(stack_id, pull_request).await
    }

    async fn set_pr_comment_id(
        &self,
        stack_id: &str,
        pull_request: i64,
        comment_id: i64,
    ) -> Result<()> {
        self.notify_set_pr_comment(stack_id, pull_request, comment_id)
            .await
    }
}

impl SqliteStore {
    /// Whether `sql` (selecting by one id) finds a row. Asked on the writer, after a write that
    /// matched nothing, so that it sees the state that write saw.
    /// What a failed batch insert of `runs[firsts]` means, as the single-run insert would
    /// say it: the first run whose stack is missing (NotFound) or whose id is taken.
    async fn batch_insert_err(&self, e: sqlx::Error, runs: &[Run], firsts: &[usize]) -> StoreError {
        let (sql, kind): (&str, &'static str) = if is_foreign_key(&e) {
            ("SELECT 1 FROM stacks WHERE id = ?1", "stack")
        } else if is_unique(&e) {
            ("SELECT 1 FROM runs WHERE id = ?1", "run")
        } else {
            return db(e);
        };
        for &i in firsts {
            let id = if kind == "stack" {
                &runs[i].stack_id
            } else {
                &runs[i].id
            };
            let found = sqlx::query(sql).bind(id).fetch_optional(&self.write).await;
            match (kind, found) {
                ("stack", Ok(None)) => return StoreError::not_found("stack", id.clone()),
                ("run", Ok(Some(_))) => {
                    return StoreError::AlreadyExists {
                        kind: "run",
                        id: id.clone(),
                    }
                }
                (_, Err(e)) => return db(e),
                _ => {}
            }
        }
        db(e)
    }

    async fn exists(&self, sql: &'static str, id: &str) -> Result<bool> {
        Ok(sqlx::query(sql)
            .bind(id)
            .fetch_optional(&self.write)
            .await
            .map_err(db)?
            .is_some())
    }
}
