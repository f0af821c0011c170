//! Many-stack reads and writes for a push that fans out to a whole repository, in a few
//! statements whatever the number of stacks: ids travel as one JSON array parameter
//! (`json_each`), rows as multi-row VALUES, rather than a statement (and a round trip to the
//! connection's thread) per stack.

use cairn_core::{Run, Stack};
use cairn_store::{Result, StoreError};

use super::{db, run_from, to_json, SqliteStore};

/// Stacks per UPDATE: 4 bound values each, under SQLite's 32,766 variables.
const STACK_ROWS_PER_UPDATE: usize = 5_000;

impl SqliteStore {
    pub(crate) async fn fanout_unfinished_runs_of(&self, stack_ids: &[String]) -> Result<Vec<Run>> {
        sqlx::query(
            "SELECT doc FROM runs
              WHERE terminal = 0 AND stack_id IN (SELECT value FROM json_each(?1))
              ORDER BY stack_id, created_at, id",
        )
        .bind(to_json(stack_ids)?)
        .fetch_all(&self.read)
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
        let mut stored = Vec::with_capacity(stacks.len());
        for mut stack in stacks {
            stack.version += 1;
            stored.push(stack);
        }
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        let mut updated = 0;
        for (chunk, versions) in stored
            .chunks(STACK_ROWS_PER_UPDATE)
            .zip(expected.chunks(STACK_ROWS_PER_UPDATE))
        {
            let mut rows = Vec::with_capacity(chunk.len());
            for (stack, expected) in chunk.iter().zip(versions) {
                rows.push((
                    stack.id.as_str(),
                    *expected,
                    to_json(&stack.labels)?,
                    to_json(stack)?,
                ));
            }
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "UPDATE stacks SET version = stacks.version + 1, labels = u.column3, doc = u.column4
                   FROM (",
            );
            q.push_values(rows, |mut b, (id, expected, labels, doc)| {
                b.push_bind(id)
                    .push_bind(expected)
                    .push_bind(labels)
                    .push_bind(doc);
            });
            q.push(") AS u WHERE stacks.id = u.column1 AND stacks.version = u.column2");
            updated += q
                .build()
                .execute(&mut *tx)
                .await
                .map_err(db)?
                .rows_affected();
        }
        if updated == stored.len() as u64 {
            tx.commit().await.map_err(db)?;
            return Ok(stored);
        }
        tx.rollback().await.map_err(db)?;
        // Name the first stack that changed or disappeared, as update_stack would.
        let ids: Vec<&str> = stored.iter().map(|s| s.id.as_str()).collect();
        let current: std::collections::HashMap<String, i64> = sqlx::query_as(
            "SELECT id, version FROM stacks WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(to_json(&ids)?)
        .fetch_all(&self.write)
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
        // Unreachable under BEGIN IMMEDIATE (no other writer between the update and the
        // rollback), kept as an error rather than a panic.
        Err(StoreError::Backend(
            "update_stacks: fewer stacks updated than given, yet every version matches".into(),
        ))
    }
}
