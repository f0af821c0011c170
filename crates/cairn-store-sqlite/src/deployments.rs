//! Deployments and configuration versions (migration 0006).

use cairn_core::{ConfigurationVersion, Deployment};
use cairn_store::{Result, StoreError};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::{db, insert_err, is_unique, SqliteStore};

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Backend(format!("deployment document: {e}"))
}

fn deployment_from(row: &SqliteRow) -> Result<Deployment> {
    let doc: String = row.try_get("doc").map_err(db)?;
    let mut d: Deployment = serde_json::from_str(&doc).map_err(json_err)?;
    d.lock_holder = row.try_get("lock_run_id").map_err(db)?;
    Ok(d)
}

fn version_from(row: &SqliteRow) -> Result<ConfigurationVersion> {
    let doc: String = row.try_get("doc").map_err(db)?;
    let mut v: ConfigurationVersion = serde_json::from_str(&doc).map_err(json_err)?;
    v.seq = row.try_get("seq").map_err(db)?;
    Ok(v)
}

impl SqliteStore {
    pub(crate) async fn dep_create(&self, d: Deployment) -> Result<Deployment> {
        let doc = serde_json::to_string(&d).map_err(json_err)?;
        let key = format!("{}/{}", d.stack_id, d.name);
        sqlx::query("INSERT INTO deployments (stack_id, name, doc) VALUES (?1, ?2, ?3)")
            .bind(&d.stack_id)
            .bind(&d.name)
            .bind(doc)
            .execute(&self.write)
            .await
            .map_err(insert_err("deployment", &key, ("stack", &d.stack_id)))?;
        self.dep_get(&d.stack_id, &d.name).await
    }

    pub(crate) async fn dep_get(&self, stack_id: &str, name: &str) -> Result<Deployment> {
        let row = sqlx::query("SELECT * FROM deployments WHERE stack_id = ?1 AND name = ?2")
            .bind(stack_id)
            .bind(name)
            .fetch_optional(&self.write)
            .await
            .map_err(db)?
            .ok_or_else(|| StoreError::not_found("deployment", format!("{stack_id}/{name}")))?;
        deployment_from(&row)
    }

    pub(crate) async fn dep_list(&self, stack_id: &str) -> Result<Vec<Deployment>> {
        sqlx::query("SELECT * FROM deployments WHERE stack_id = ?1 ORDER BY name")
            .bind(stack_id)
            .fetch_all(&self.read)
            .await
            .map_err(db)?
            .iter()
            .map(deployment_from)
            .collect()
    }

    pub(crate) async fn dep_update(&self, d: Deployment) -> Result<Deployment> {
        let doc = serde_json::to_string(&d).map_err(json_err)?;
        let done = sqlx::query("UPDATE deployments SET doc = ?3 WHERE stack_id = ?1 AND name = ?2")
            .bind(&d.stack_id)
            .bind(&d.name)
            .bind(doc)
            .execute(&self.write)
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found(
                "deployment",
                format!("{}/{}", d.stack_id, d.name),
            ));
        }
        self.dep_get(&d.stack_id, &d.name).await
    }

    pub(crate) async fn dep_lock(
        &self,
        stack_id: &str,
        name: &str,
        run_id: &str,
    ) -> Result<String> {
        sqlx::query(
            "UPDATE deployments SET lock_run_id = ?3
             WHERE stack_id = ?1 AND name = ?2 AND lock_run_id IN ('', ?3)",
        )
        .bind(stack_id)
        .bind(name)
        .bind(run_id)
        .execute(&self.write)
        .await
        .map_err(db)?;
        Ok(self.dep_get(stack_id, name).await?.lock_holder)
    }

    pub(crate) async fn dep_unlock(
        &self,
        stack_id: &str,
        name: &str,
        run_id: &str,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE deployments SET lock_run_id = ''
             WHERE stack_id = ?1 AND name = ?2 AND lock_run_id = ?3 AND ?3 <> ''",
        )
        .bind(stack_id)
        .bind(name)
        .bind(run_id)
        .execute(&self.write)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    pub(crate) async fn cv_add(&self, v: ConfigurationVersion) -> Result<ConfigurationVersion> {
        let doc = serde_json::to_string(&v).map_err(json_err)?;
        // The next seq is computed inside the INSERT: one statement, so two writers cannot
        // take the same number (a lost race is a unique violation, retried).
        for _ in 0..16 {
            let res = sqlx::query(
                "INSERT INTO configuration_versions (stack_id, seq, id, doc)
                 SELECT ?1, COALESCE(MAX(seq), 0) + 1, ?2, ?3
                 FROM configuration_versions WHERE stack_id = ?1
                 RETURNING seq",
            )
            .bind(&v.stack_id)
            .bind(&v.id)
            .bind(&doc)
            .fetch_one(&self.write)
            .await;
            match res {
                Ok(row) => {
                    let mut out = v;
                    out.seq = row.try_get("seq").map_err(db)?;
                    return Ok(out);
                }
                Err(e) if is_unique(&e) && self.cv_id_free(&v.id).await? => continue,
                Err(e) => {
                    return Err(insert_err(
                        "configuration version",
                        &v.id,
                        ("stack", &v.stack_id),
                    )(e))
                }
            }
        }
        Err(StoreError::Conflict {
            kind: "configuration version",
            id: v.stack_id,
            expected: -1,
        })
    }

    async fn cv_id_free(&self, id: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM configuration_versions WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.write)
            .await
            .map_err(db)?;
        Ok(row.is_none())
    }

    pub(crate) async fn cv_get(&self, stack_id: &str, seq: i64) -> Result<ConfigurationVersion> {
        let row =
            sqlx::query("SELECT * FROM configuration_versions WHERE stack_id = ?1 AND seq = ?2")
                .bind(stack_id)
                .bind(seq)
                .fetch_optional(&self.read)
                .await
                .map_err(db)?
                .ok_or_else(|| {
                    StoreError::not_found("configuration version", format!("{stack_id}/{seq}"))
                })?;
        version_from(&row)
    }

    pub(crate) async fn cv_list(
        &self,
        stack_id: &str,
        before: i64,
        limit: u32,
    ) -> Result<Vec<ConfigurationVersion>> {
        let before = if before > 0 { before } else { i64::MAX };
        sqlx::query(
            "SELECT * FROM configuration_versions WHERE stack_id = ?1 AND seq < ?2
             ORDER BY seq DESC LIMIT ?3",
        )
        .bind(stack_id)
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await
        .map_err(db)?
        .iter()
        .map(version_from)
        .collect()
    }
}
