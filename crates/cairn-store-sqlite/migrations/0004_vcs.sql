-- VCS integrations (secrets sealed by the server), received webhook deliveries (stored before
-- the 2xx; unique per integration and delivery id) and the refs the plain-Git poller last saw.
CREATE TABLE vcs_integrations (
    id                    TEXT PRIMARY KEY,
    provider              TEXT NOT NULL,
    api_base_url          TEXT NOT NULL,
    webhook_secret        BLOB NOT NULL,
    token                 BLOB NOT NULL,
    poll_interval_seconds INTEGER NOT NULL,
    created_at            INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE vcs_events (
    id             TEXT PRIMARY KEY,
    integration_id TEXT NOT NULL REFERENCES vcs_integrations(id) ON DELETE CASCADE,
    provider       TEXT NOT NULL,
    delivery_id    TEXT NOT NULL,
    event_type     TEXT NOT NULL,
    payload        BLOB NOT NULL,
    received_at    INTEGER NOT NULL,
    processed_at   INTEGER NOT NULL,
    result         TEXT NOT NULL,
    UNIQUE (integration_id, delivery_id)
);
-- The start-up and background processors look for unprocessed events only.
CREATE INDEX vcs_events_unprocessed ON vcs_events (received_at) WHERE processed_at = 0;

CREATE TABLE git_refs (
    repository TEXT NOT NULL,
    name       TEXT NOT NULL,
    sha        TEXT NOT NULL,
    PRIMARY KEY (repository, name)
) WITHOUT ROWID;
