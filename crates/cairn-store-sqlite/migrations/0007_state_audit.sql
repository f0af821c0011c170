-- Who holds a state lock (the worker running the holder run's Terraform) and why a state
-- version exists when no Terraform wrote it (an admin's restore or an import).
ALTER TABLE state_locks ADD COLUMN holder_worker_id TEXT NOT NULL DEFAULT '';
ALTER TABLE state_versions ADD COLUMN note TEXT NOT NULL DEFAULT '';
