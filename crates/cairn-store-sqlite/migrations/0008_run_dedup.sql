-- One VCS-created run per (stack, deployment, commit SHA, run type), enforced by the database so
-- that two writers (two server processes on one file) processing the same event cannot both
-- insert. NULL for runs created otherwise (users, trigger policies), which never collide.
ALTER TABLE runs ADD COLUMN dedup_key TEXT;
CREATE UNIQUE INDEX runs_dedup_key ON runs (dedup_key);

-- Runs created by git events before this migration get their key, the oldest run of a key
-- keeping it (earlier versions deduplicated in the application, so duplicates are rare).
UPDATE runs SET dedup_key = stack_id || '/' || deployment || '/'
        || lower(trim(json_extract(doc, '$.commit.hash'))) || '/' || run_type
 WHERE json_extract(doc, '$.triggered_by') LIKE 'git:%'
   AND id = (SELECT r2.id FROM runs AS r2
              WHERE r2.stack_id = runs.stack_id AND r2.deployment = runs.deployment
                AND r2.run_type = runs.run_type
                AND json_extract(r2.doc, '$.triggered_by') LIKE 'git:%'
                AND lower(trim(json_extract(r2.doc, '$.commit.hash')))
                    = lower(trim(json_extract(runs.doc, '$.commit.hash')))
              ORDER BY r2.created_at, r2.id LIMIT 1);
