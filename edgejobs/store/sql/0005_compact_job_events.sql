-- A `job` event now stores a JSON array of the job's values (edgejobs.store.rows
-- JOB_EVENT_FIELDS), not a JSON object with a key per field: a third of the bytes, and every
-- status change writes one. Events of the replay window written before are converted here,
-- so readers know one format.
UPDATE events SET data = json_array(
    json_extract(data, '$.status'),
    json_extract(data, '$.job_type'),
    CASE json_extract(data, '$.priority')
        WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'normal' THEN 2 ELSE 3 END,
    json_extract(data, '$.error.type'),
    json_extract(data, '$.error.message'),
    json(printf('%!.17g', json_extract(data, '$.progress'))),
    json_extract(data, '$.progress_message'),
    json_extract(data, '$.attempts'),
    json_extract(data, '$.max_retries'),
    json_extract(data, '$.run_at'),
    json_extract(data, '$.next_retry_at'),
    json_extract(data, '$.created_at'),
    json_extract(data, '$.started_at'),
    json_extract(data, '$.finished_at'),
    json_extract(data, '$.updated_at'),
    json_extract(data, '$.cancel_reason')
)
WHERE kind = 'job' AND json_type(data) = 'object';
