-- Terraform/OpenTofu state served by the HTTP state backend: append-only versions (the current
-- one is the highest serial) and at most one lock per stack and deployment.
CREATE TABLE state_versions (
    stack_id       TEXT NOT NULL REFERENCES stacks(id) ON DELETE CASCADE,
    deployment     TEXT NOT NULL,
    serial         INTEGER NOT NULL,
    lineage        TEXT NOT NULL,
    body           BLOB NOT NULL,
    outputs_json   TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    created_by_run TEXT NOT NULL,
    PRIMARY KEY (stack_id, deployment, serial)
) WITHOUT ROWID;

CREATE TABLE state_locks (
    stack_id      TEXT NOT NULL REFERENCES stacks(id) ON DELETE CASCADE,
    deployment    TEXT NOT NULL,
    lock_id       TEXT NOT NULL,
    holder_run_id TEXT NOT NULL,
    info_json     TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (stack_id, deployment)
) WITHOUT ROWID;
-- Force-release of every lock a failed run holds.
CREATE INDEX state_locks_by_holder ON state_locks (holder_run_id);
