//! Many-stack reads and writes for a push that fans out to a whole repository: each is one
//! statement whatever the number of stacks, the ids travelling as array parameters.

use cairn_core::{Run, Stack};
use cairn_store::{Result, StoreError};

use super::{db, run_from, to_json, PostgresStore};

impl PostgresStore {
    pub(crate) async fn fanout_unfinished_runs_of(&self, stack_ids: &[String]) -> Result<Vec<Run>> {
        sqlx::query(
            "SELECT doc FROM runs WHERE NOT terminal AND stack_id = ANY($1::text[])
              ORDER BY stack_id, created_at, id",
        )
        .bind(stack_ids)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(run_from)
        .collect()
    }

    pub(crate) async fn fanout_update_stacks(&self, stacks: Vec<Stack>) -> Result<Vec<Stack>> {
        cairn_store::check_distinct_stacks(&stacks)?;
        if stacks.is_empty() {
            return Ok(stacks);
        }
        let expected: Vec<i64> = stacks.iter().map(|s| s.version).collect();
        let (mut ids, mut labels, mut docs) = (Vec::new(), Vec::new(), Vec::new());
        let mut stored = Vec::with_capacity(stacks.len());
        for mut stack in stacks {
            stack.version += 1;
            ids.push(stack.id.clone());
            labels.push(to_json(&stack.labels)?);
            docs.push(to_json(&stack)?);
            stored.push(stack);
        }
        let mut tx = self.pool.begin().await.map_err(db)?;
        let done = sqlx::query(
            "UPDATE stacks
                SET version = stacks.version + 1, labels = u.labels::jsonb, doc = u.doc
               FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[])
                    AS u(id, expected, labels, doc)
              WHERE stacks.id = u.id AND stacks.version = u.expected",
        )
        .bind(&ids)
        .bind(&expected)
        .bind(&labels)
        .bind(&docs)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        if done.rows_affected() == stored.len() as u64 {
            tx.commit().await.map_err(db)?;
            return Ok(stored);
        }
        // Name the first stack that changed or disappeared, as update_stack would; read after
        // the rollback, since inside the transaction the updated rows show their new versions.
        tx.rollback().await.map_err(db)?;
        let current: std::collections::HashMap<String, i64> =
            sqlx::query_as("SELECT id, version FROM stacks WHERE id = ANY($1::text[])")
                .bind(&ids)
                .fetch_all(&self.pool)
                .await
                .map_err(db)?
                .into_iter()
                .collect();
        for (stack, expected) in stored.into_iter().zip(expected) {
            match current.get(&stack.id) {
                None => return Err(StoreError::not_found("stack", stack.id)),
                Some(v) if *v != expected => {
                    return Err(StoreError::Conflict {
                        kind: "stack",
                        id: stack.id,
                        expected,
                    })
                }
                Some(_) => {}
            }
        }
        // The stack that made the update fall short changed again in between (versions only
        // grow, so it cannot match again): a race with another writer, reported as such.
        Err(StoreError::Backend(
            "update_stacks: stacks changed during the update; retry".into(),
        ))
    }
}
