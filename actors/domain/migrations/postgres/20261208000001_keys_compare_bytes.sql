-- PostgreSQL only. Keys and statuses compare byte by byte (the "C" collation): they are
-- identifiers, never sorted for people, and a database created with a language collation
-- (C.UTF-8, en_US.UTF-8) would otherwise compare every key through strcoll in each index
-- lookup and insert. The indexes on these columns are rebuilt once, here.
ALTER TABLE orders
    ALTER COLUMN order_id TYPE TEXT COLLATE "C",
    ALTER COLUMN status TYPE TEXT COLLATE "C";
ALTER TABLE order_history
    ALTER COLUMN order_id TYPE TEXT COLLATE "C",
    ALTER COLUMN status TYPE TEXT COLLATE "C";
ALTER TABLE payments
    ALTER COLUMN order_id TYPE TEXT COLLATE "C",
    ALTER COLUMN status TYPE TEXT COLLATE "C";
ALTER TABLE payment_attempts ALTER COLUMN order_id TYPE TEXT COLLATE "C";
ALTER TABLE reservations ALTER COLUMN order_id TYPE TEXT COLLATE "C";
ALTER TABLE reservation_items
    ALTER COLUMN order_id TYPE TEXT COLLATE "C",
    ALTER COLUMN product_id TYPE TEXT COLLATE "C";
ALTER TABLE products ALTER COLUMN product_id TYPE TEXT COLLATE "C";
ALTER TABLE idempotency_keys ALTER COLUMN idempotency_key TYPE TEXT COLLATE "C";
