-- One VCS-created run per (stack, deployment, commit SHA, run type), enforced by the database so
-- that several replicas processing the same event cannot both insert. NULL for runs created
-- otherwise (users, trigger policies), which never collide (NULLs are distinct).
ALTER TABLE runs ADD COLUMN dedup_key TEXT;
CREATE UNIQUE INDEX runs_dedup_key ON runs (dedup_key);

-- Runs created by git events before this migration get their key, the oldest run of a key
-- keeping it (earlier versions deduplicated in the application, so duplicates are rare).
UPDATE runs SET dedup_key = k.key
  FROM (SELECT DISTINCT ON (key) id, key
          FROM (SELECT id, created_at,
                       stack_id || '/' || deployment || '/'
                         || lower(trim(doc::jsonb #>> '{commit,hash}')) || '/' || run_type AS key
                  FROM runs
                 WHERE doc::jsonb ->> 'triggered_by' LIKE 'git:%') AS g
         ORDER BY key, created_at, id) AS k
 WHERE runs.id = k.id;
