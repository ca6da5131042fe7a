-- The order system's schema, portable between SQLite and PostgreSQL: TEXT and BIGINT only,
-- times as Unix milliseconds, no engine-specific types or sequences. The framework's own
-- tables (inbox, outbox) come from the runtime's migrations.

-- Stock: available + reserved + sold is what was put in.
CREATE TABLE products (
    product_id TEXT PRIMARY KEY,
    available BIGINT NOT NULL CHECK (available >= 0),
    reserved BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold BIGINT NOT NULL DEFAULT 0 CHECK (sold >= 0),
    price_cents BIGINT NOT NULL CHECK (price_cents >= 0),
    updated_at BIGINT NOT NULL
);

-- One row per order the stock handler has seen: reserved, rejected, released, sold, or
-- cancelled (a tombstone: cancelled before it was ever reserved). The row is claimed first
-- (INSERT ... ON CONFLICT DO NOTHING), so a reservation and a cancellation of the same order
-- in two transactions never both act on it.
CREATE TABLE reservations (
    order_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    lane TEXT NOT NULL,
    amount_cents BIGINT,
    updated_at BIGINT NOT NULL
);

CREATE TABLE reservation_items (
    order_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    unit_price_cents BIGINT NOT NULL,
    PRIMARY KEY (order_id, product_id)
);

-- The order read model.
CREATE TABLE orders (
    order_id TEXT PRIMARY KEY,
    customer_id TEXT,
    items TEXT,
    priority TEXT NOT NULL DEFAULT 'standard',
    shipping_address TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    detail TEXT,
    amount_cents BIGINT,
    correlation_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX orders_status_updated ON orders (status, updated_at);

CREATE TABLE order_history (
    order_id TEXT NOT NULL,
    status TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (order_id, status)
);

-- Payments, one per order.
CREATE TABLE payments (
    order_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    amount_cents BIGINT NOT NULL,
    payment_id TEXT,
    attempts BIGINT NOT NULL,
    detail TEXT,
    updated_at BIGINT NOT NULL
);

-- Idempotency-Key of POST /orders: the same key gives the same order and no second event.
CREATE TABLE idempotency_keys (
    idempotency_key TEXT PRIMARY KEY,
    request TEXT NOT NULL,
    order_id TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    messages TEXT NOT NULL,
    published BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);
