-- Common fields extracted from JSON payloads, one row per delivery. Non-JSON bodies keep
-- their row with NULL extracted fields. Twin of ../bigquery/events_common.sql.
CREATE VIEW events_common AS
SELECT
    id,
    ts,
    source,
    provider,
    event_type,
    json_extract(j, '$.action')                AS action,
    json_extract(j, '$.repository.full_name')  AS repository,
    json_extract(j, '$.sender.login')          AS sender,
    json_extract(j, '$.issue.number')          AS issue_number,
    json_extract(j, '$.issue.title')           AS issue_title,
    json_extract(j, '$.id')                    AS payload_id,
    json_extract(j, '$.type')                  AS payload_type
FROM (
    SELECT *, CASE WHEN payload_encoding = 'utf8' AND json_valid(payload) THEN payload END AS j
    FROM events
);
