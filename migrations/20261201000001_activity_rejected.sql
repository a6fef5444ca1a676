-- The activity log never stalls on a record PostgreSQL refuses: such records are set aside here
-- (pruned with the activity retention), and a day without a partition gets one on demand.

CREATE TABLE activity_rejected (
    rejected_at timestamptz NOT NULL DEFAULT now(),
    server_id   text NOT NULL,
    -- The record as the gameserver held it (arena_gameserver::persist::activity::record_json).
    record      jsonb NOT NULL,
    -- Why PostgreSQL refused it.
    error       text NOT NULL
);
CREATE INDEX activity_rejected_at ON activity_rejected (rejected_at);

-- The daily partition holding `day`, created if missing. True when it was created.
CREATE FUNCTION arena_activity_partition_for(day date)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    name text := 'activity_' || to_char(day, 'YYYYMMDD');
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format(
        'CREATE TABLE IF NOT EXISTS %I PARTITION OF activity FOR VALUES FROM (%L) TO (%L)',
        name,
        (day::timestamp AT TIME ZONE 'UTC'),
        ((day + 1)::timestamp AT TIME ZONE 'UTC'));
    RETURN true;
END
$$;
