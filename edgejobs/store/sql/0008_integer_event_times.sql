-- `job` events written before event times were integers hold them as ISO 8601 text
-- ("2026-11-30T06:20:55.156Z", the API's format), and 0005 carried that text over into the
-- array. Readers render integer milliseconds (edgejobs.store.rows.render_job_event), so such
-- an event could not be replayed: convert the six times (run_at .. updated_at, positions 9
-- to 14 of edgejobs.store.rows JOB_EVENT_FIELDS) of every such event, exactly to the
-- millisecond. created_at is never NULL, so its type tells an event of the old kind.
UPDATE events SET data = json_set(data,
    '$[9]', CASE WHEN json_type(data, '$[9]') = 'text' THEN
        CAST(strftime('%s', json_extract(data, '$[9]')) AS INTEGER) * 1000
        + CAST(round(strftime('%f', json_extract(data, '$[9]')) * 1000) AS INTEGER) % 1000
        ELSE json_extract(data, '$[9]') END,
    '$[10]', CASE WHEN json_type(data, '$[10]') = 'text' THEN
        CAST(strftime('%s', json_extract(data, '$[10]')) AS INTEGER) * 1000
        + CAST(round(strftime('%f', json_extract(data, '$[10]')) * 1000) AS INTEGER) % 1000
        ELSE json_extract(data, '$[10]') END,
    '$[11]', CASE WHEN json_type(data, '$[11]') = 'text' THEN
        CAST(strftime('%s', json_extract(data, '$[11]')) AS INTEGER) * 1000
        + CAST(round(strftime('%f', json_extract(data, '$[11]')) * 1000) AS INTEGER) % 1000
        ELSE json_extract(data, '$[11]') END,
    '$[12]', CASE WHEN json_type(data, '$[12]') = 'text' THEN
        CAST(strftime('%s', json_extract(data, '$[12]')) AS INTEGER) * 1000
        + CAST(round(strftime('%f', json_extract(data, '$[12]')) * 1000) AS INTEGER) % 1000
        ELSE json_extract(data, '$[12]') END,
    '$[13]', CASE WHEN json_type(data, '$[13]') = 'text' THEN
        CAST(strftime('%s', json_extract(data, '$[13]')) AS INTEGER) * 1000
        + CAST(round(strftime('%f', json_extract(data, '$[13]')) * 1000) AS INTEGER) % 1000
        ELSE json_extract(data, '$[13]') END,
    '$[14]', CASE WHEN json_type(data, '$[14]') = 'text' THEN
        CAST(strftime('%s', json_extract(data, '$[14]')) AS INTEGER) * 1000
        + CAST(round(strftime('%f', json_extract(data, '$[14]')) * 1000) AS INTEGER) % 1000
        ELSE json_extract(data, '$[14]') END
)
WHERE kind = 'job' AND json_type(data) = 'array' AND json_type(data, '$[11]') = 'text';
