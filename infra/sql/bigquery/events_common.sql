-- Common fields extracted from JSON payloads, one row per delivery. `${project}` and
-- `${dataset}` are filled in by `hookline provision`. Twin of ../sqlite/events_common.sql.
CREATE OR REPLACE VIEW `${project}.${dataset}.events_common` AS
SELECT
    id,
    ts,
    source,
    provider,
    event_type,
    JSON_VALUE(j, '$.action')                                AS action,
    JSON_VALUE(j, '$.repository.full_name')                  AS repository,
    JSON_VALUE(j, '$.sender.login')                          AS sender,
    SAFE_CAST(JSON_VALUE(j, '$.issue.number') AS INT64)      AS issue_number,
    JSON_VALUE(j, '$.issue.title')                           AS issue_title,
    JSON_VALUE(j, '$.id')                                    AS payload_id,
    JSON_VALUE(j, '$.type')                                  AS payload_type
FROM (
    SELECT *, IF(payload_encoding = 'utf8', payload, NULL) AS j
    FROM `${project}.${dataset}.events`
);
