-- GitHub issue lifecycle: per repository and issue number, when it was opened, when it was
-- closed (NULL while open, or again open after a reopen), and the seconds it took.
-- Times come from the payload (issue.created_at / issue.closed_at), so late or replayed
-- deliveries do not skew them; the latest event per issue (by issue.updated_at) decides the
-- current state. Twin of ../bigquery/github_issue_lifecycle.sql.
CREATE VIEW github_issue_lifecycle AS
WITH issue_events AS (
    SELECT
        json_extract(payload, '$.repository.full_name') AS repository,
        json_extract(payload, '$.issue.number')         AS issue_number,
        json_extract(payload, '$.issue.title')          AS title,
        json_extract(payload, '$.issue.state')          AS state,
        json_extract(payload, '$.issue.created_at')     AS created_at,
        json_extract(payload, '$.issue.closed_at')      AS closed_at,
        json_extract(payload, '$.issue.updated_at')     AS updated_at,
        ts
    FROM events
    WHERE provider = 'github' AND event_type = 'issues'
      AND payload_encoding = 'utf8' AND json_valid(payload)
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
    CASE WHEN state = 'closed' THEN closed_at END AS closed_at,
    CASE WHEN state = 'closed'
         THEN CAST(ROUND((julianday(closed_at) - julianday(created_at)) * 86400) AS INTEGER)
    END AS seconds_to_close
FROM latest
WHERE rn = 1;
