//! Outgoing webhooks, their delivery log and pull-request comment ids (migration 0005).

use cairn_store::{DeliveryRecord, Result, StoreError, WebhookRecord};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::{db, insert_err, SqliteStore};

fn webhook_from(row: &SqliteRow) -> Result<WebhookRecord> {
    Ok(WebhookRecord {
        id: row.try_get("id").map_err(db)?,
        url: row.try_get("url").map_err(db)?,
        secret: row.try_get("secret").map_err(db)?,
        stack_id: row.try_get("stack_id").map_err(db)?,
        format: row.try_get("format").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
    })
}

fn delivery_from(row: &SqliteRow) -> Result<DeliveryRecord> {
    Ok(DeliveryRecord {
        id: row.try_get("id").map_err(db)?,
        webhook_id: row.try_get("webhook_id").map_err(db)?,
        run_id: row.try_get("run_id").map_err(db)?,
        run_state: row.try_get("run_state").map_err(db)?,
        status: row.try_get("status").map_err(db)?,
        status_code: row.try_get("status_code").map_err(db)?,
        attempts: row.try_get("attempts").map_err(db)?,
        error: row.try_get("error").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
        updated_at: row.try_get("updated_at").map_err(db)?,
    })
}

impl SqliteStore {
    pub(crate) async fn notify_create_webhook(&self, w: WebhookRecord) -> Result<WebhookRecord> {
        sqlx::query(
            "INSERT INTO webhooks (id, url, secret, stack_id, format, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(&w.id)
        .bind(&w.url)
        .bind(&w.secret)
        .bind(&w.stack_id)
        .bind(&w.format)
        .bind(w.created_at)
        .execute(&self.write)
        .await
        .map_err(insert_err("webhook", &w.id, ("webhook", &w.id)))?;
        Ok(w)
    }

    pub(crate) async fn notify_get_webhook(&self, id: &str) -> Result<WebhookRecord> {
        let row = sqlx::query("SELECT * FROM webhooks WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.read)
            .await
            .map_err(db)?
            .ok_or_else(|| StoreError::not_found("webhook", id))?;
        webhook_from(&row)
    }

    pub(crate) async fn notify_list_webhooks(&self) -> Result<Vec<WebhookRecord>> {
        sqlx::query("SELECT * FROM webhooks ORDER BY id")
            .fetch_all(&self.read)
            .await
            .map_err(db)?
            .iter()
            .map(webhook_from)
            .collect()
    }

    pub(crate) async fn notify_delete_webhook(&self, id: &str) -> Result<()> {
        let done = sqlx::query("DELETE FROM webhooks WHERE id = ?1")
            .bind(id)
            .execute(&self.write)
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found("webhook", id));
        }
        Ok(())
    }

    pub(crate) async fn notify_put_delivery(&self, d: DeliveryRecord, keep: u32) -> Result<()> {
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, webhook_id, run_id, run_state, status,
                                             status_code, attempts, error, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (id) DO UPDATE SET status = excluded.status,
                 status_code = excluded.status_code, attempts = excluded.attempts,
                 error = excluded.error, updated_at = excluded.updated_at",
        )
        .bind(&d.id)
        .bind(&d.webhook_id)
        .bind(&d.run_id)
        .bind(&d.run_state)
        .bind(&d.status)
        .bind(d.status_code)
        .bind(d.attempts)
        .bind(&d.error)
        .bind(d.created_at)
        .bind(d.updated_at)
        .execute(&self.write)
        .await
        .map_err(insert_err("delivery", &d.id, ("webhook", &d.webhook_id)))?;
        sqlx::query(
            "DELETE FROM webhook_deliveries WHERE webhook_id = ?1 AND id NOT IN (
                 SELECT id FROM webhook_deliveries WHERE webhook_id = ?1
                 ORDER BY created_at DESC, id DESC LIMIT ?2)",
        )
        .bind(&d.webhook_id)
        .bind(i64::from(keep))
        .execute(&self.write)
        .await
        .map_err(db)?;
        Ok(())
    }

    pub(crate) async fn notify_list_deliveries(
        &self,
        webhook_id: &str,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>> {
        sqlx::query(
            "SELECT * FROM webhook_deliveries WHERE webhook_id = ?1
             ORDER BY created_at DESC, id DESC LIMIT ?2",
        )
        .bind(webhook_id)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await
        .map_err(db)?
        .iter()
        .map(delivery_from)
        .collect()
    }

    pub(crate) async fn notify_pr_comment(&self, stack_id: &str, pr: i64) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT comment_id FROM pr_comments WHERE stack_id = ?1 AND pull_request = ?2",
        )
        .bind(stack_id)
        .bind(pr)
        .fetch_optional(&self.read)
        .await
        .map_err(db)?;
        row.map(|r| r.try_get("comment_id").map_err(db)).transpose()
    }

    pub(crate) async fn notify_set_pr_comment(
        &self,
        stack_id: &str,
        pr: i64,
        comment_id: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO pr_comments (stack_id, pull_request, comment_id) VALUES (?1, ?2, ?3)
             ON CONFLICT (stack_id, pull_request) DO UPDATE SET comment_id = excluded.comment_id",
        )
        .bind(stack_id)
        .bind(pr)
        .bind(comment_id)
        .execute(&self.write)
        .await
        .map_err(insert_err("pr comment", stack_id, ("stack", stack_id)))?;
        Ok(())
    }
}
