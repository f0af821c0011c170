//! VCS integrations, received deliveries and the plain-Git poller's refs (migration 0004).

use cairn_core::Nanos;
use cairn_store::{
    GitRefRecord, PullRequestRecord, Result, StoreError, VcsEventRecord, VcsIntegration,
};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::{db, insert_err, SqliteStore};

fn integration_from(row: &SqliteRow) -> Result<VcsIntegration> {
    Ok(VcsIntegration {
        id: row.try_get("id").map_err(db)?,
        provider: row.try_get("provider").map_err(db)?,
        api_base_url: row.try_get("api_base_url").map_err(db)?,
        webhook_secret: row.try_get("webhook_secret").map_err(db)?,
        token: row.try_get("token").map_err(db)?,
        poll_interval_seconds: row.try_get("poll_interval_seconds").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
    })
}

fn event_from(row: &SqliteRow) -> Result<VcsEventRecord> {
    Ok(VcsEventRecord {
        id: row.try_get("id").map_err(db)?,
        integration_id: row.try_get("integration_id").map_err(db)?,
        provider: row.try_get("provider").map_err(db)?,
        delivery_id: row.try_get("delivery_id").map_err(db)?,
        event_type: row.try_get("event_type").map_err(db)?,
        payload: row.try_get("payload").map_err(db)?,
        received_at: row.try_get("received_at").map_err(db)?,
        processed_at: row.try_get("processed_at").map_err(db)?,
        result: row.try_get("result").map_err(db)?,
    })
}

impl SqliteStore {
    pub(crate) async fn vcs_create_integration(&self, i: VcsIntegration) -> Result<VcsIntegration> {
        sqlx::query(
            "INSERT INTO vcs_integrations (id, provider, api_base_url, webhook_secret, token,
                                           poll_interval_seconds, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(&i.id)
        .bind(&i.provider)
        .bind(&i.api_base_url)
        .bind(&i.webhook_secret)
        .bind(&i.token)
        .bind(i.poll_interval_seconds)
        .bind(i.created_at)
        .execute(&self.write)
        .await
        .map_err(insert_err(
            "vcs integration",
            &i.id,
            ("vcs integration", &i.id),
        ))?;
        Ok(i)
    }

    pub(crate) async fn vcs_get_integration(&self, id: &str) -> Result<VcsIntegration> {
        let row = sqlx::query("SELECT * FROM vcs_integrations WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.read)
            .await
            .map_err(db)?
            .ok_or_else(|| StoreError::not_found("vcs integration", id))?;
        integration_from(&row)
    }

    pub(crate) async fn vcs_list_integrations(&self) -> Result<Vec<VcsIntegration>> {
        sqlx::query("SELECT * FROM vcs_integrations ORDER BY id")
            .fetch_all(&self.read)
            .await
            .map_err(db)?
            .iter()
            .map(integration_from)
            .collect()
    }

    pub(crate) async fn vcs_add_event(&self, e: VcsEventRecord) -> Result<VcsEventRecord> {
        sqlx::query(
            "INSERT INTO vcs_events (id, integration_id, provider, delivery_id, event_type,
                                     payload, received_at, processed_at, result)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .bind(&e.id)
        .bind(&e.integration_id)
        .bind(&e.provider)
        .bind(&e.delivery_id)
        .bind(&e.event_type)
        .bind(&e.payload)
        .bind(e.received_at)
        .bind(e.processed_at)
        .bind(&e.result)
        .execute(&self.write)
        .await
        .map_err(insert_err(
            "vcs event",
            &e.delivery_id,
            ("vcs integration", &e.integration_id),
        ))?;
        Ok(e)
    }

    pub(crate) async fn vcs_event_by_delivery(
        &self,
        integration_id: &str,
        delivery_id: &str,
    ) -> Result<VcsEventRecord> {
        let row =
            sqlx::query("SELECT * FROM vcs_events WHERE integration_id = ?1 AND delivery_id = ?2")
                .bind(integration_id)
                .bind(delivery_id)
                .fetch_optional(&self.write)
                .await
                .map_err(db)?
                .ok_or_else(|| StoreError::not_found("vcs event", delivery_id))?;
        event_from(&row)
    }

    pub(crate) async fn vcs_unprocessed_events(&self) -> Result<Vec<VcsEventRecord>> {
        sqlx::query("SELECT * FROM vcs_events WHERE processed_at = 0 ORDER BY received_at, id")
            .fetch_all(&self.write)
            .await
            .map_err(db)?
            .iter()
            .map(event_from)
            .collect()
    }

    pub(crate) async fn vcs_mark_processed(&self, id: &str, at: Nanos, result: &str) -> Result<()> {
        let done =
            sqlx::query("UPDATE vcs_events SET processed_at = ?2, result = ?3 WHERE id = ?1")
                .bind(id)
                .bind(at)
                .bind(result)
                .execute(&self.write)
                .await
                .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found("vcs event", id));
        }
        Ok(())
    }

    pub(crate) async fn vcs_git_refs(&self, repository: &str) -> Result<Vec<GitRefRecord>> {
        sqlx::query("SELECT name, sha FROM git_refs WHERE repository = ?1 ORDER BY name")
            .bind(repository)
            .fetch_all(&self.write)
            .await
            .map_err(db)?
            .iter()
            .map(|row| {
                Ok(GitRefRecord {
                    name: row.try_get("name").map_err(db)?,
                    sha: row.try_get("sha").map_err(db)?,
                })
            })
            .collect()
    }

    pub(crate) async fn vcs_set_git_refs(
        &self,
        repository: &str,
        refs: &[GitRefRecord],
    ) -> Result<()> {
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        sqlx::query("DELETE FROM git_refs WHERE repository = ?1")
            .bind(repository)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        for r in refs {
            sqlx::query("INSERT INTO git_refs (repository, name, sha) VALUES (?1, ?2, ?3)")
                .bind(repository)
                .bind(&r.name)
                .bind(&r.sha)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    pub(crate) async fn vcs_put_pull_request(&self, pr: PullRequestRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO vcs_pull_requests (integration_id, repository, number, event_json,
                                            updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (integration_id, repository, number)
             DO UPDATE SET event_json = excluded.event_json, updated_at = excluded.updated_at",
        )
        .bind(&pr.integration_id)
        .bind(&pr.repository)
        .bind(pr.number)
        .bind(&pr.event_json)
        .bind(pr.updated_at)
        .execute(&self.write)
        .await
        .map_err(insert_err(
            "pull request",
            &format!("{}#{}", pr.repository, pr.number),
            ("vcs integration", &pr.integration_id),
        ))?;
        Ok(())
    }

    pub(crate) async fn vcs_get_pull_request(
        &self,
        integration_id: &str,
        repository: &str,
        number: i64,
    ) -> Result<Option<PullRequestRecord>> {
        let row = sqlx::query(
            "SELECT integration_id, repository, number, event_json, updated_at
             FROM vcs_pull_requests
             WHERE integration_id = ?1 AND repository = ?2 AND number = ?3",
        )
        .bind(integration_id)
        .bind(repository)
        .bind(number)
        .fetch_optional(&self.read)
        .await
        .map_err(db)?;
        row.map(|r: SqliteRow| {
            Ok(PullRequestRecord {
                integration_id: r.try_get("integration_id").map_err(db)?,
                repository: r.try_get("repository").map_err(db)?,
                number: r.try_get("number").map_err(db)?,
                event_json: r.try_get("event_json").map_err(db)?,
                updated_at: r.try_get("updated_at").map_err(db)?,
            })
        })
        .transpose()
    }
}
