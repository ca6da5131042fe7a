-- The framework's own tables, portable between SQLite and PostgreSQL (TEXT, BIGINT and
-- BYTEA only; times are Unix milliseconds). Applications keep their tables in migrations of
-- their own; the runtime records its migrations in `_jetflow_migrations`.

-- Processed input messages, per consumer: what makes a redelivery change nothing.
CREATE TABLE inbox (
    consumer TEXT NOT NULL,
    message_key TEXT NOT NULL,
    processed_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, message_key)
);
CREATE INDEX inbox_processed_at ON inbox (processed_at);

-- Messages committed with a state change and not yet acknowledged by JetStream.
CREATE TABLE outbox (
    id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    payload BYTEA NOT NULL,
    headers TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX outbox_due ON outbox (next_attempt_at, created_at);
