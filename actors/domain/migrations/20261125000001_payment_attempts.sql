-- Charge attempts whose outcome is unknown (the provider timed out, answered 5xx, or the
-- connection broke after the request was sent): such a charge may have gone through, so a
-- cancelled order with an attempt here has its charge voided.
CREATE TABLE IF NOT EXISTS payment_attempts (
    order_id TEXT PRIMARY KEY,
    uncertain_at BIGINT NOT NULL
);

-- Payments whose charge must be voided at the provider (status 'void_pending'), found by the
-- voider.
CREATE INDEX payments_status ON payments (status);
