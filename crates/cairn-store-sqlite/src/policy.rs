//! Policies, attachments, samples, reviews and approval outcomes.

use cairn_core::CoreError;
use cairn_store::{Page, PageOut, PolicyRecord, PolicySample, Result, ReviewRecord, StoreError};
use sqlx::sqlite::SqliteRow;

use crate::{db, from_json, get, insert_err, to_json, SqliteStore};

fn policy_from(row: &SqliteRow) -> Result<PolicyRecord> {
    Ok(PolicyRecord {
        id: get(row, "id")?,
        name: get(row, "name")?,
        kind: get(row, "kind")?,
        body: get(row, "body")?,
        labels: from_json("policy", &get::<String>(row, "labels")?)?,
        version: get(row, "version")?,
        stack_ids: Vec::new(),
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
    })
}

fn sample_from(row: &SqliteRow) -> Result<PolicySample> {
    Ok(PolicySample {
        id: get(row, "id")?,
        policy_id: get(row, "policy_id")?,
        policy_version: get(row, "policy_version")?,
        run_id: get(row, "run_id")?,
        input_json: get(row, "input_json")?,
        decision_json: get(row, "decision_json")?,
        duration_micros: get(row, "duration_micros")?,
        created_at: get(row, "created_at")?,
        error: get(row, "error")?,
    })
}

fn review_from(row: &SqliteRow) -> Result<ReviewRecord> {
    Ok(ReviewRecord {
        run_id: get(row, "run_id")?,
        login: get(row, "login")?,
        name: get(row, "name")?,
        teams: from_json("review", &get::<String>(row, "teams")?)?,
        approve: get(row, "approve")?,
        note: get(row, "note")?,
        run_state: get(row, "run_state")?,
        remote_ip: get(row, "remote_ip")?,
        timestamp: get(row, "timestamp")?,
    })
}

fn bad_token() -> StoreError {
    CoreError::invalid("page_token", "not a token returned by this listing").into()
}

/// Policies page by id (`p:` tokens), samples by insertion sequence (`ps:` tokens).
fn policy_cursor(page: &Page) -> Result<String> {
    match &page.token {
        None => Ok(String::new()),
        Some(t) => t
            .strip_prefix("p:")
            .map(str::to_string)
            .ok_or_else(bad_token),
    }
}

fn sample_cursor(page: &Page) -> Result<i64> {
    match &page.token {
        None => Ok(i64::MAX),
        Some(t) => t
            .strip_prefix("ps:")
            .and_then(|n| n.parse().ok())
            .ok_or_else(bad_token),
    }
}

impl SqliteStore {
    async fn attached_stacks(&self, policy_id: &str) -> Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT stack_id FROM policy_attachments WHERE policy_id = ?1 ORDER BY stack_id",
        )
        .bind(policy_id)
        .fetch_all(&self.read)
        .await
        .map_err(db)
    }

    async fn with_stacks(&self, mut policies: Vec<PolicyRecord>) -> Result<Vec<PolicyRecord>> {
        for p in &mut policies {
            p.stack_ids = self.attached_stacks(&p.id).await?;
        }
        Ok(policies)
    }

    pub(crate) async fn policy_create(&self, mut p: PolicyRecord) -> Result<PolicyRecord> {
        p.version = 1;
        p.stack_ids.clear();
        sqlx::query(
            "INSERT INTO policies (id, name, kind, body, labels, version, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(&p.id)
        .bind(&p.name)
        .bind(&p.kind)
        .bind(&p.body)
        .bind(to_json(&p.labels)?)
        .bind(p.version)
        .bind(p.created_at)
        .bind(p.updated_at)
        .execute(&self.write)
        .await
        .map_err(insert_err("policy", &p.id, ("policy", "")))?;
        Ok(p)
    }

    pub(crate) async fn policy_get(&self, id: &str) -> Result<PolicyRecord> {
        let row = sqlx::query("SELECT * FROM policies WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.read)
            .await
            .map_err(db)?
            .ok_or_else(|| StoreError::not_found("policy", id))?;
        let mut p = policy_from(&row)?;
        p.stack_ids = self.attached_stacks(id).await?;
        Ok(p)
    }

    pub(crate) async fn policy_list(
        &self,
        kind: Option<&str>,
        page: &Page,
    ) -> Result<PageOut<PolicyRecord>> {
        let after = policy_cursor(page)?;
        let limit = page.limit();
        let rows = sqlx::query(
            "SELECT * FROM policies WHERE id > ?1 AND (?2 = '' OR kind = ?2)
             ORDER BY id LIMIT ?3",
        )
        .bind(after)
        .bind(kind.unwrap_or(""))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.read)
        .await
        .map_err(db)?;
        let mut items = rows.iter().map(policy_from).collect::<Result<Vec<_>>>()?;
        let next = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|p| format!("p:{}", p.id))
        } else {
            None
        };
        Ok(PageOut {
            items: self.with_stacks(items).await?,
            next,
        })
    }

    pub(crate) async fn policy_all(&self) -> Result<Vec<PolicyRecord>> {
        let rows = sqlx::query("SELECT * FROM policies ORDER BY id")
            .fetch_all(&self.read)
            .await
            .map_err(db)?;
        let items = rows.iter().map(policy_from).collect::<Result<Vec<_>>>()?;
        self.with_stacks(items).await
    }

    pub(crate) async fn policy_update(&self, mut p: PolicyRecord) -> Result<PolicyRecord> {
        let expected = p.version;
        p.version = expected + 1;
        let done = sqlx::query(
            "UPDATE policies SET name = ?1, body = ?2, labels = ?3, version = ?4, updated_at = ?5
             WHERE id = ?6 AND version = ?7",
        )
        .bind(&p.name)
        .bind(&p.body)
        .bind(to_json(&p.labels)?)
        .bind(p.version)
        .bind(p.updated_at)
        .bind(&p.id)
        .bind(expected)
        .execute(&self.write)
        .await
        .map_err(db)?;
        if done.rows_affected() == 1 {
            return self.policy_get(&p.id).await;
        }
        let found = sqlx::query("SELECT 1 FROM policies WHERE id = ?1")
            .bind(&p.id)
            .fetch_optional(&self.write)
            .await
            .map_err(db)?;
        match found {
            Some(_) => Err(StoreError::Conflict {
                kind: "policy",
                id: p.id,
                expected,
            }),
            None => Err(StoreError::not_found("policy", p.id)),
        }
    }

    pub(crate) async fn policy_delete(&self, id: &str) -> Result<()> {
        // Attachments and samples go with the policy: ON DELETE CASCADE.
        let done = sqlx::query("DELETE FROM policies WHERE id = ?1")
            .bind(id)
            .execute(&self.write)
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found("policy", id));
        }
        Ok(())
    }

    pub(crate) async fn policy_attach(&self, policy_id: &str, stack_id: &str) -> Result<()> {
        let mut tx = self.write.begin().await.map_err(db)?;
        for (kind, sql, id) in [
            ("policy", "SELECT 1 FROM policies WHERE id = ?1", policy_id),
            ("stack", "SELECT 1 FROM stacks WHERE id = ?1", stack_id),
        ] {
            let found = sqlx::query(sql)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
            if found.is_none() {
                return Err(StoreError::not_found(kind, id));
            }
        }
        sqlx::query(
            "INSERT INTO policy_attachments (policy_id, stack_id) VALUES (?1, ?2)
             ON CONFLICT (policy_id, stack_id) DO NOTHING",
        )
        .bind(policy_id)
        .bind(stack_id)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    pub(crate) async fn policy_detach(&self, policy_id: &str, stack_id: &str) -> Result<()> {
        let done =
            sqlx::query("DELETE FROM policy_attachments WHERE policy_id = ?1 AND stack_id = ?2")
                .bind(policy_id)
                .bind(stack_id)
                .execute(&self.write)
                .await
                .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found(
                "policy attachment",
                format!("{policy_id}/{stack_id}"),
            ));
        }
        Ok(())
    }

    pub(crate) async fn sample_add(&self, s: PolicySample, keep: u32) -> Result<()> {
        let mut tx = self.write.begin().await.map_err(db)?;
        sqlx::query(
            "INSERT INTO policy_samples (id, policy_id, policy_version, run_id, input_json,
                                         decision_json, duration_micros, created_at, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .bind(&s.id)
        .bind(&s.policy_id)
        .bind(s.policy_version)
        .bind(&s.run_id)
        .bind(&s.input_json)
        .bind(&s.decision_json)
        .bind(s.duration_micros)
        .bind(s.created_at)
        .bind(&s.error)
        .execute(&mut *tx)
        .await
        .map_err(insert_err("policy sample", &s.id, ("policy", &s.policy_id)))?;
        sqlx::query(
            "DELETE FROM policy_samples WHERE policy_id = ?1 AND seq NOT IN
               (SELECT seq FROM policy_samples WHERE policy_id = ?1 ORDER BY seq DESC LIMIT ?2)",
        )
        .bind(&s.policy_id)
        .bind(i64::from(keep.max(1)))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    pub(crate) async fn sample_get(&self, id: &str) -> Result<PolicySample> {
        let row = sqlx::query("SELECT * FROM policy_samples WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.read)
            .await
            .map_err(db)?
            .ok_or_else(|| StoreError::not_found("policy sample", id))?;
        sample_from(&row)
    }

    pub(crate) async fn sample_list(
        &self,
        policy_id: &str,
        page: &Page,
    ) -> Result<PageOut<PolicySample>> {
        let before = sample_cursor(page)?;
        let limit = page.limit();
        let rows = sqlx::query(
            "SELECT * FROM policy_samples WHERE policy_id = ?1 AND seq < ?2
             ORDER BY seq DESC LIMIT ?3",
        )
        .bind(policy_id)
        .bind(before)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.read)
        .await
        .map_err(db)?;
        let mut seqs = Vec::with_capacity(rows.len());
        let mut items = Vec::with_capacity(rows.len());
        for r in &rows {
            seqs.push(get::<i64>(r, "seq")?);
            items.push(sample_from(r)?);
        }
        let next = if items.len() > limit as usize {
            items.truncate(limit as usize);
            Some(format!("ps:{}", seqs[limit as usize - 1]))
        } else {
            None
        };
        Ok(PageOut { items, next })
    }

    pub(crate) async fn review_add(&self, r: ReviewRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO run_reviews (run_id, login, name, teams, approve, note, run_state,
                                      remote_ip, timestamp)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .bind(&r.run_id)
        .bind(&r.login)
        .bind(&r.name)
        .bind(to_json(&r.teams)?)
        .bind(r.approve)
        .bind(&r.note)
        .bind(&r.run_state)
        .bind(&r.remote_ip)
        .bind(r.timestamp)
        .execute(&self.write)
        .await
        .map_err(insert_err("review", &r.run_id, ("run", &r.run_id)))?;
        Ok(())
    }

    pub(crate) async fn review_list(&self, run_id: &str) -> Result<Vec<ReviewRecord>> {
        sqlx::query("SELECT * FROM run_reviews WHERE run_id = ?1 ORDER BY seq")
            .bind(run_id)
            .fetch_all(&self.read)
            .await
            .map_err(db)?
            .iter()
            .map(review_from)
            .collect()
    }

    pub(crate) async fn approval_set(
        &self,
        run_id: &str,
        state: &str,
        outcome: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO run_approvals (run_id, state, outcome) VALUES (?1, ?2, ?3)
             ON CONFLICT (run_id, state) DO UPDATE SET outcome = excluded.outcome",
        )
        .bind(run_id)
        .bind(state)
        .bind(outcome)
        .execute(&self.write)
        .await
        .map_err(insert_err("run approval", run_id, ("run", run_id)))?;
        Ok(())
    }

    pub(crate) async fn approval_get(&self, run_id: &str, state: &str) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT outcome FROM run_approvals WHERE run_id = ?1 AND state = ?2")
            .bind(run_id)
            .bind(state)
            .fetch_optional(&self.read)
            .await
            .map_err(db)
    }
}
