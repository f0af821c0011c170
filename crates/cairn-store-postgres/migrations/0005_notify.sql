-- Outgoing webhooks (secret sealed by the server), their delivery log (one row per
-- notification, rewritten after each attempt) and the pull-request comment kept per stack.
CREATE TABLE webhooks (
    id         TEXT PRIMARY KEY,
    url        TEXT NOT NULL,
    secret     BYTEA NOT NULL,
    stack_id   TEXT NOT NULL,
    format     TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE webhook_deliveries (
    id          TEXT PRIMARY KEY,
    webhook_id  TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    run_id      TEXT NOT NULL,
    run_state   TEXT NOT NULL,
    status      TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    attempts    INTEGER NOT NULL,
    error       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
-- The log is read and trimmed newest first per webhook.
CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries (webhook_id, created_at, id);

CREATE TABLE pr_comments (
    stack_id     TEXT NOT NULL REFERENCES stacks(id) ON DELETE CASCADE,
    pull_request BIGINT NOT NULL,
    comment_id   BIGINT NOT NULL,
    PRIMARY KEY (stack_id, pull_request)
);
