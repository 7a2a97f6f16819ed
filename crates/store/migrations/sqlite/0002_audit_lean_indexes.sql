-- Audit appends run at request rate; every index is paid for on each insert. `kind` and
-- `outcome` have a handful of values each, so an index on them does not narrow a search:
-- "recent events of kind K" walks the table newest-first by seq and stops at the limit.
-- The selective filters (credential id, time) keep their indexes.
DROP INDEX IF EXISTS audit_events_kind;
DROP INDEX IF EXISTS audit_events_outcome;
