-- Policies, their direct attachments, evaluation samples, run reviews and approval outcomes.
CREATE TABLE policies (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    body       TEXT NOT NULL,
    labels     TEXT NOT NULL,       -- JSON array of strings
    version    BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX policies_by_kind ON policies (kind, id);

CREATE TABLE policy_attachments (
    policy_id TEXT NOT NULL REFERENCES policies (id) ON DELETE CASCADE,
    stack_id  TEXT NOT NULL REFERENCES stacks (id) ON DELETE CASCADE,
    PRIMARY KEY (policy_id, stack_id)
);
CREATE INDEX policy_attachments_by_stack ON policy_attachments (stack_id);

-- `seq` orders samples by insertion (newest first in listings, oldest pruned first).
CREATE TABLE policy_samples (
    seq             BIGSERIAL PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    policy_id       TEXT NOT NULL REFERENCES policies (id) ON DELETE CASCADE,
    policy_version  BIGINT NOT NULL,
    run_id          TEXT NOT NULL,
    input_json      TEXT NOT NULL,
    decision_json   TEXT NOT NULL,
    duration_micros BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    error           TEXT NOT NULL
);
CREATE INDEX policy_samples_by_policy ON policy_samples (policy_id, seq DESC);

CREATE TABLE run_reviews (
    seq       BIGSERIAL PRIMARY KEY,
    run_id    TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    login     TEXT NOT NULL,
    name      TEXT NOT NULL,
    teams     TEXT NOT NULL,        -- JSON array of strings
    approve   BOOLEAN NOT NULL,
    note      TEXT NOT NULL,
    run_state TEXT NOT NULL,
    remote_ip TEXT NOT NULL,
    timestamp BIGINT NOT NULL
);
CREATE INDEX run_reviews_by_run ON run_reviews (run_id, seq);

CREATE TABLE run_approvals (
    run_id  TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    state   TEXT NOT NULL,
    outcome TEXT NOT NULL,
    PRIMARY KEY (run_id, state)
);
