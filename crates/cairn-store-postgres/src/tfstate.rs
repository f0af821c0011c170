//! Terraform state versions and state locks (migration 0003). A write that checks before it
//! writes takes a transaction-scoped advisory lock on its (stack, deployment) first: a row lock
//! cannot guard the first version or a lock that does not exist yet, and several replicas may
//! write at once.

use cairn_store::{
    LockAttempt, Page, PageOut, Result, StateLock, StateVersion, StoreError, UnlockOutcome,
};
use sqlx::postgres::PgRow;
use sqlx::Row;

use crate::{db, insert_err, PostgresStore};

fn version_from(row: &PgRow) -> Result<StateVersion> {
    Ok(StateVersion {
        stack_id: row.try_get("stack_id").map_err(db)?,
        deployment: row.try_get("deployment").map_err(db)?,
        serial: row.try_get("serial").map_err(db)?,
        lineage: row.try_get("lineage").map_err(db)?,
        body: row.try_get("body").map_err(db)?,
        outputs_json: row.try_get("outputs_json").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
        created_by_run: row.try_get("created_by_run").map_err(db)?,
        note: row.try_get("note").map_err(db)?,
    })
}

fn lock_from(row: &PgRow) -> Result<StateLock> {
    Ok(StateLock {
        stack_id: row.try_get("stack_id").map_err(db)?,
        deployment: row.try_get("deployment").map_err(db)?,
        id: row.try_get("lock_id").map_err(db)?,
        holder_run_id: row.try_get("holder_run_id").map_err(db)?,
        holder_worker_id: row.try_get("holder_worker_id").map_err(db)?,
        info_json: row.try_get("info_json").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
    })
}

/// Page tokens of state version listings: `s:<serial of the last item>`.
fn serial_cursor(page: &Page) -> Result<Option<i64>> {
    match &page.token {
        None => Ok(None),
        Some(t) if t.is_empty() => Ok(None),
        Some(t) => t
            .strip_prefix("s:")
            .and_then(|n| n.parse().ok())
            .map(Some)
            .ok_or_else(|| {
                cairn_core::CoreError::invalid("page_token", "not a token of this list").into()
            }),
    }
}

fn key(stack_id: &str, deployment: &str) -> String {
    format!("{stack_id}/{deployment}")
}

/// Serializes check-then-write operations on one deployment's state within `tx`.
async fn lock_key(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    stack_id: &str,
    deployment: &str,
) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("cairn-state/{stack_id}/{deployment}"))
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    Ok(())
}

impl PostgresStore {
    pub(crate) async fn tf_add_state_version(&self, v: StateVersion) -> Result<StateVersion> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        lock_key(&mut tx, &v.stack_id, &v.deployment).await?;
        let current = sqlx::query(
            "SELECT serial, lineage FROM state_versions WHERE stack_id = $1 AND deployment = $2
             ORDER BY serial DESC LIMIT 1",
        )
        .bind(&v.stack_id)
        .bind(&v.deployment)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        if let Some(row) = current {
            let serial: i64 = row.try_get("serial").map_err(db)?;
            let lineage: String = row.try_get("lineage").map_err(db)?;
            if v.serial <= serial || v.lineage != lineage {
                return Err(StoreError::Conflict {
                    kind: "state version",
                    id: key(&v.stack_id, &v.deployment),
                    expected: serial,
                });
            }
        }
        sqlx::query(
            "INSERT INTO state_versions (stack_id, deployment, serial, lineage, body,
                                         outputs_json, created_at, created_by_run, note)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&v.stack_id)
        .bind(&v.deployment)
        .bind(v.serial)
        .bind(&v.lineage)
        .bind(&v.body)
        .bind(&v.outputs_json)
        .bind(v.created_at)
        .bind(&v.created_by_run)
        .bind(&v.note)
        .execute(&mut *tx)
        .await
        .map_err(insert_err(
            "state version",
            &key(&v.stack_id, &v.deployment),
            ("stack", &v.stack_id),
        ))?;
        tx.commit().await.map_err(db)?;
        Ok(v)
    }

    pub(crate) async fn tf_current_state_version(
        &self,
        stack_id: &str,
        deployment: &str,
    ) -> Result<Option<StateVersion>> {
        sqlx::query(
            "SELECT * FROM state_versions WHERE stack_id = $1 AND deployment = $2
             ORDER BY serial DESC LIMIT 1",
        )
        .bind(stack_id)
        .bind(deployment)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .as_ref()
        .map(version_from)
        .transpose()
    }

    pub(crate) async fn tf_get_state_version(
        &self,
        stack_id: &str,
        deployment: &str,
        serial: i64,
    ) -> Result<StateVersion> {
        let row = sqlx::query(
            "SELECT * FROM state_versions WHERE stack_id = $1 AND deployment = $2 AND serial = $3",
        )
        .bind(stack_id)
        .bind(deployment)
        .bind(serial)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .ok_or_else(|| {
            StoreError::not_found("state version", format!("{stack_id}/{deployment}/{serial}"))
        })?;
        version_from(&row)
    }

    pub(crate) async fn tf_list_state_versions(
        &self,
        stack_id: &str,
        deployment: &str,
        page: &Page,
    ) -> Result<PageOut<StateVersion>> {
        let limit = page.limit();
        let below = serial_cursor(page)?.unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "SELECT * FROM state_versions WHERE stack_id = $1 AND deployment = $2 AND serial < $3
             ORDER BY serial DESC LIMIT $4",
        )
        .bind(stack_id)
        .bind(deployment)
        .bind(below)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut items = rows.iter().map(version_from).collect::<Result<Vec<_>>>()?;
        let next = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|v| format!("s:{}", v.serial))
        } else {
            None
        };
        Ok(PageOut { items, next })
    }

    pub(crate) async fn tf_acquire_state_lock(&self, lock: StateLock) -> Result<LockAttempt> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        lock_key(&mut tx, &lock.stack_id, &lock.deployment).await?;
        let held = sqlx::query("SELECT * FROM state_locks WHERE stack_id = $1 AND deployment = $2")
            .bind(&lock.stack_id)
            .bind(&lock.deployment)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?
            .as_ref()
            .map(lock_from)
            .transpose()?;
        if let Some(held) = held {
            // Terraform's HTTP client retries a lock request whose answer it lost: the same id
            // from the same run is that retry, not contention.
            return Ok(
                if held.id == lock.id && held.holder_run_id == lock.holder_run_id {
                    LockAttempt::Acquired(held)
                } else {
                    LockAttempt::Held(held)
                },
            );
        }
        sqlx::query(
            "INSERT INTO state_locks (stack_id, deployment, lock_id, holder_run_id, info_json,
                                      created_at, holder_worker_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&lock.stack_id)
        .bind(&lock.deployment)
        .bind(&lock.id)
        .bind(&lock.holder_run_id)
        .bind(&lock.info_json)
        .bind(lock.created_at)
        .bind(&lock.holder_worker_id)
        .execute(&mut *tx)
        .await
        .map_err(insert_err(
            "state lock",
            &key(&lock.stack_id, &lock.deployment),
            ("stack", &lock.stack_id),
        ))?;
        tx.commit().await.map_err(db)?;
        Ok(LockAttempt::Acquired(lock))
    }

    pub(crate) async fn tf_release_state_lock(
        &self,
        stack_id: &str,
        deployment: &str,
        lock_id: &str,
    ) -> Result<UnlockOutcome> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        lock_key(&mut tx, stack_id, deployment).await?;
        let held = sqlx::query("SELECT * FROM state_locks WHERE stack_id = $1 AND deployment = $2")
            .bind(stack_id)
            .bind(deployment)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?
            .as_ref()
            .map(lock_from)
            .transpose()?;
        let Some(held) = held else {
            return Ok(UnlockOutcome::NotLocked);
        };
        if held.id != lock_id {
            return Ok(UnlockOutcome::HeldByOther(held));
        }
        sqlx::query("DELETE FROM state_locks WHERE stack_id = $1 AND deployment = $2")
            .bind(stack_id)
            .bind(deployment)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(UnlockOutcome::Released(held))
    }

    pub(crate) async fn tf_get_state_lock(
        &self,
        stack_id: &str,
        deployment: &str,
    ) -> Result<Option<StateLock>> {
        sqlx::query("SELECT * FROM state_locks WHERE stack_id = $1 AND deployment = $2")
            .bind(stack_id)
            .bind(deployment)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .as_ref()
            .map(lock_from)
            .transpose()
    }

    pub(crate) async fn tf_force_release_state_locks(
        &self,
        run_id: &str,
    ) -> Result<Vec<StateLock>> {
        sqlx::query(
            "DELETE FROM state_locks WHERE holder_run_id = $1
             RETURNING stack_id, deployment, lock_id, holder_run_id, info_json, created_at,
                       holder_worker_id",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(lock_from)
        .collect()
    }
}
