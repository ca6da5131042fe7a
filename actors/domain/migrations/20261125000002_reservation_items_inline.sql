-- A reservation's items are kept on its own row (JSON: [[product_id, quantity,
-- unit_price_cents], ...], in product order), so that reserving writes one row and selling or
-- releasing reads none. Reservations made before this migration keep their items in
-- reservation_items (and NULL here); the stock store reads them from there.
ALTER TABLE reservations ADD COLUMN items TEXT;
