-- GitHub issue lifecycle; see ../sqlite/github_issue_lifecycle.sql for the definition.
CREATE OR REPLACE VIEW `${project}.${dataset}.github_issue_lifecycle` AS
WITH issue_events AS (
    SELECT
        JSON_VALUE(payload, '$.repository.full_name')                 AS repository,
        SAFE_CAST(JSON_VALUE(payload, '$.issue.number') AS INT64)     AS issue_number,
        JSON_VALUE(payload, '$.issue.title')                          AS title,
        JSON_VALUE(payload, '$.issue.state')                          AS state,
        SAFE_CAST(JSON_VALUE(payload, '$.issue.created_at') AS TIMESTAMP) AS created_at,
        SAFE_CAST(JSON_VALUE(payload, '$.issue.closed_at') AS TIMESTAMP)  AS closed_at,
        SAFE_CAST(JSON_VALUE(payload, '$.issue.updated_at') AS TIMESTAMP) AS updated_at,
        ts
    FROM `${project}.${dataset}.events`
    WHERE provider = 'github' AND event_type = 'issues' AND payload_encoding = 'utf8'
),
latest AS (
    SELECT *, ROW_NUMBER() OVER (
        PARTITION BY repository, issue_number ORDER BY updated_at DESC, ts DESC) AS rn
    FROM issue_events
    WHERE repository IS NOT NULL AND issue_number IS NOT NULL
)
SELECT
    repository,
    issue_number,
    title,
    created_at AS opened_at,
    IF(state = 'closed', closed_at, NULL) AS closed_at,
    IF(state = 'closed', TIMESTAMP_DIFF(closed_at, created_at, SECOND), NULL) AS seconds_to_close
FROM latest
WHERE rn = 1;
