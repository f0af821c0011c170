-- Stacks and runs are JSON documents (serde of the cairn-core types) next to the columns that
-- queries filter and sort on. `version` is the compare-and-swap token.
CREATE TABLE stacks (
    id      TEXT PRIMARY KEY NOT NULL,
    version INTEGER NOT NULL,
    labels  TEXT NOT NULL,          -- JSON array of strings
    doc     TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE env_vars (
    stack_id TEXT NOT NULL REFERENCES stacks(id) ON DELETE CASCADE,
    name     TEXT NOT NULL,
    value    TEXT NOT NULL,
    secret   INTEGER NOT NULL,
    PRIMARY KEY (stack_id, name)
) WITHOUT ROWID;

CREATE TABLE runs (
    id          TEXT PRIMARY KEY NOT NULL,
    stack_id    TEXT NOT NULL REFERENCES stacks(id) ON DELETE CASCADE,
    deployment  TEXT NOT NULL,
    run_type    TEXT NOT NULL,
    state       TEXT NOT NULL,
    terminal    INTEGER NOT NULL,
    blocking    INTEGER NOT NULL,
    prioritized INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    version     INTEGER NOT NULL,
    workflow_id TEXT NOT NULL,
    doc         TEXT NOT NULL
);

-- A stack's runs, newest first (list_runs), and the stack's foreign key.
CREATE INDEX runs_by_stack ON runs (stack_id, created_at DESC, id DESC);
-- Unfinished runs per stack and deployment, oldest first: unfinished_runs, delete_stack's check
-- and dispatch_view (waiting runs are unfinished ones). Partial, so finished history costs
-- nothing. No index mentions `state`, so most state changes leave every index untouched.
CREATE INDEX runs_open ON runs (stack_id, deployment, created_at, id) WHERE terminal = 0;
CREATE INDEX runs_by_workflow ON runs (workflow_id);

CREATE TABLE run_logs (
    run_id    TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    seq       INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    phase     TEXT,
    stream    TEXT NOT NULL,
    message   TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;

CREATE TABLE worker_pools (
    id         TEXT PRIMARY KEY NOT NULL,
    name       TEXT NOT NULL,
    labels     TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

CREATE TABLE workers (
    id                TEXT PRIMARY KEY NOT NULL,
    pool_id           TEXT NOT NULL,
    name              TEXT NOT NULL,
    labels            TEXT NOT NULL,
    max_jobs          INTEGER NOT NULL,
    last_heartbeat_at INTEGER NOT NULL,
    connected         INTEGER NOT NULL
);
CREATE INDEX workers_by_pool ON workers (pool_id);

CREATE TABLE leases (
    id           TEXT PRIMARY KEY NOT NULL,
    run_id       TEXT NOT NULL,
    stack_id     TEXT NOT NULL,
    worker_id    TEXT NOT NULL,
    kind         TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL
);
CREATE INDEX leases_by_worker ON leases (worker_id);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY NOT NULL,
    login       TEXT NOT NULL,
    name        TEXT NOT NULL,
    teams       TEXT NOT NULL,
    machine     INTEGER NOT NULL,
    role        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked     INTEGER NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE
);
