-- Deployments of a stack (JSON document; the lock is a column so that taking it is one
-- compare-and-set) and the stack's append-only configuration versions, numbered per stack.
CREATE TABLE deployments (
    stack_id    TEXT NOT NULL REFERENCES stacks(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    lock_run_id TEXT NOT NULL DEFAULT '',
    doc         TEXT NOT NULL,
    PRIMARY KEY (stack_id, name)
);

CREATE TABLE configuration_versions (
    stack_id TEXT NOT NULL REFERENCES stacks(id) ON DELETE CASCADE,
    seq      BIGINT NOT NULL,
    id       TEXT NOT NULL UNIQUE,
    doc      TEXT NOT NULL,
    PRIMARY KEY (stack_id, seq)
);
