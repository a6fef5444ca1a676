-- Arena's durable state: worlds and who owns them, bots, sessions, world snapshots, and the
-- activity log (range-partitioned by time; see arena_activity_partitions below).

-- One row per world. `fence` is the newest placement generation that took the world: a
-- snapshot written with an older fence is refused.
CREATE TABLE worlds (
    world_id   text PRIMARY KEY,
    fence      bigint NOT NULL DEFAULT 0,
    server_id  text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE bots (
    bot_id     text PRIMARY KEY,
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now()
);

-- A bot's time in a world, from taking a seat to freeing it.
CREATE TABLE sessions (
    session_id text PRIMARY KEY,
    bot_id     text NOT NULL,
    world_id   text NOT NULL,
    server_id  text NOT NULL,
    region     text NOT NULL,
    joined_at  timestamptz NOT NULL,
    left_at    timestamptz
);
CREATE INDEX sessions_of_bot ON sessions (bot_id, joined_at DESC);
CREATE INDEX sessions_of_world ON sessions (world_id, joined_at DESC);

CREATE TABLE world_snapshots (
    world_id  text NOT NULL,
    fence     bigint NOT NULL,
    tick      bigint NOT NULL,
    -- MessagePack of the world and its seats (arena_gameserver::room::SavedRoom).
    state     bytea NOT NULL,
    -- Time taken to encode it, in microseconds.
    encode_us integer NOT NULL,
    server_id text NOT NULL,
    taken_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (world_id, fence, tick)
);

-- Joins, leaves, chat, actions and score changes.
CREATE TABLE activity (
    occurred_at timestamptz NOT NULL,
    server_id   text NOT NULL,
    -- Per server process, increasing; (occurred_at, server_id, seq) makes retried batches idempotent.
    seq         bigint NOT NULL,
    world_id    text NOT NULL,
    bot_id      text,
    kind        text NOT NULL CHECK (kind IN ('join', 'leave', 'say', 'act', 'score')),
    data        jsonb,
    PRIMARY KEY (occurred_at, server_id, seq)
) PARTITION BY RANGE (occurred_at);
-- "Activity of world W in a time range".
CREATE INDEX activity_of_world ON activity (world_id, occurred_at);

-- Daily partitions: create those from yesterday to `days_ahead` days ahead that are missing,
-- and detach those entirely older than `retention_days` days (0 keeps everything). Detached
-- partitions stay as plain tables for archiving. Returns the number of partitions created.
CREATE FUNCTION arena_activity_partitions(days_ahead integer, retention_days integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    day date;
    created integer := 0;
    part record;
BEGIN
    FOR day IN
        SELECT generate_series((now() AT TIME ZONE 'UTC')::date - 1,
                               (now() AT TIME ZONE 'UTC')::date + days_ahead, interval '1 day')::date
    LOOP
        IF to_regclass('activity_' || to_char(day, 'YYYYMMDD')) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF activity FOR VALUES FROM (%L) TO (%L)',
                'activity_' || to_char(day, 'YYYYMMDD'),
                (day::timestamp AT TIME ZONE 'UTC'),
                ((day + 1)::timestamp AT TIME ZONE 'UTC'));
            created := created + 1;
        END IF;
    END LOOP;
    IF retention_days > 0 THEN
        FOR part IN
            SELECT c.relname
            FROM pg_inherits i
            JOIN pg_class c ON c.oid = i.inhrelid
            JOIN pg_class p ON p.oid = i.inhparent
            WHERE p.relname = 'activity'
              AND c.relname ~ '^activity_[0-9]{8}$'
              AND to_date(substr(c.relname, 10), 'YYYYMMDD')
                  < (now() AT TIME ZONE 'UTC')::date - retention_days
        LOOP
            EXECUTE format('ALTER TABLE activity DETACH PARTITION %I', part.relname);
        END LOOP;
    END IF;
    RETURN created;
END
$$;

SELECT arena_activity_partitions(7, 0);
