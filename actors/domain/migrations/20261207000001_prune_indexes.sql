-- Pruning deletes old rows a chunk at a time (`db::delete_older_than`); each chunk finds its
-- rows through these indexes instead of scanning the table past the rows already deleted.
CREATE INDEX IF NOT EXISTS idempotency_keys_created_at ON idempotency_keys (created_at);
CREATE INDEX IF NOT EXISTS payment_attempts_uncertain_at ON payment_attempts (uncertain_at);
