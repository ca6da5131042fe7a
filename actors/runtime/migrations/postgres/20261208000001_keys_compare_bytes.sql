-- PostgreSQL only. Keys compare byte by byte (the "C" collation): the inbox's and the outbox's
-- keys are identifiers, never sorted for people, and a database created with a language
-- collation (C.UTF-8, en_US.UTF-8) would otherwise compare every key through strcoll in each
-- index lookup and insert. The indexes on these columns are rebuilt once, here.
ALTER TABLE inbox
    ALTER COLUMN consumer TYPE TEXT COLLATE "C",
    ALTER COLUMN message_key TYPE TEXT COLLATE "C";
ALTER TABLE outbox ALTER COLUMN id TYPE TEXT COLLATE "C";
