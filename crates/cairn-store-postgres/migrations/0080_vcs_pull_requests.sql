-- The newest pull-request event seen per (integration, repository, number), normalized (JSON):
-- GitHub's issue_comment events name the pull request by number only, and the push policy of
-- a comment needs its head, base and state. (0080: engineer C's second migration of the
-- 0008 round; versions must be integers for sqlx, so no 0008b.)
CREATE TABLE vcs_pull_requests (
    integration_id TEXT NOT NULL REFERENCES vcs_integrations (id) ON DELETE CASCADE,
    repository     TEXT NOT NULL,
    number         BIGINT NOT NULL,
    event_json     TEXT NOT NULL,
    updated_at     BIGINT NOT NULL,
    PRIMARY KEY (integration_id, repository, number)
);
