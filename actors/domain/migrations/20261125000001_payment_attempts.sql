-- Charge attempts whose outcome is unknown (the provider timed out or the connection broke
-- after the request was sent): such a charge may have gone through, so giving up on the
-- payment must void it at the provider first.
CREATE TABLE IF NOT EXISTS payment_attempts (
    order_id TEXT PRIMARY KEY,
    uncertain_at BIGINT NOT NULL
);
