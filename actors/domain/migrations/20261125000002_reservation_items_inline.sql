-- A reservation's items are kept on its own row (JSON: [[product_id, quantity,
-- unit_price_cents], ...], in product order), so that selling or releasing reads them back
-- from the update that finishes the reservation. Reservations made before this migration
-- have NULL here and their items only in reservation_items, which the stock store reads for
-- them; new reservations are written to both, so that the previous version, still running
-- during a rolling upgrade, finds the items of what this one reserved.
ALTER TABLE reservations ADD COLUMN items TEXT;
