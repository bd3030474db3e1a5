-- 0005: governance (lib/governance): crash-safe deletion of stored objects, withdrawal deletion requests
-- with a measurable 24 h deadline, and the consent-change events already applied.

-- Deleting an object and its row cannot be one transaction (the object store is not the database), so a
-- deletion goes in three steps: 1. purge_started_at is committed (intent: "this object may be gone from
-- now on"); 2. the object is deleted; 3. deleted_at is committed. A purge killed between 1 and 3 leaves
-- rows with purge_started_at set and deleted_at NULL; the next purge run completes them.
--   live      = deleted_at IS NULL AND purge_started_at IS NULL   (the object exists; readers may use it)
--   in purge  = deleted_at IS NULL AND purge_started_at IS NOT NULL (the object may or may not exist)
--   deleted   = deleted_at IS NOT NULL                              (the row stays as a tombstone)
-- So a live row never points at a deleted object, and an object never outlives its row's live or
-- in-purge state (rows are never deleted: they stay as tombstones).
ALTER TABLE vault_items ADD COLUMN purge_started_at timestamptz;

-- The retention scan: expired, live, not held, oldest first. The partial index of 0001 (expires_at over
-- deleted_at IS NULL) also held in-purge and legal-hold rows, which every scan would step over again
-- (held rows pile up at the old end of the index); this one holds exactly the purge candidates, and
-- nothing else reads the old one.
DROP INDEX vault_items_live_expiry_idx;
CREATE INDEX vault_items_purgeable_expiry_idx ON vault_items (expires_at)
    WHERE deleted_at IS NULL AND purge_started_at IS NULL AND NOT legal_hold;
-- Interrupted purges to complete: normally empty, so looking for them costs nothing.
CREATE INDEX vault_items_in_purge_idx ON vault_items (id)
    WHERE deleted_at IS NULL AND purge_started_at IS NOT NULL;
-- Expired items kept by a legal hold are reported by every purge: few rows, their own small index.
CREATE INDEX vault_items_held_expiry_idx ON vault_items (expires_at)
    WHERE deleted_at IS NULL AND legal_hold;

-- One row per withdrawal: the user's data from uploads received up to requested_at is deleted by the
-- user_data_purge run, which fills completed_at. due_at (requested_at + the 24 h promised, written with the
-- request so that a later change of the promise does not rewrite old ones; a generated column cannot add
-- an interval to a timestamptz) and duration_s make the deadline measurable: overdue = pending and
-- due_at < now, met = completed_at <= due_at.
CREATE TABLE deletion_requests (
    id             bigserial PRIMARY KEY,
    user_id        uuid NOT NULL,
    reason         text NOT NULL CHECK (reason IN ('withdrawal')),
    note           text,
    requested_by   text NOT NULL,
    requested_at   timestamptz NOT NULL,
    due_at         timestamptz NOT NULL,
    status         text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'completed', 'partial_hold')),
    completed_at   timestamptz,
    duration_s     double precision GENERATED ALWAYS AS (extract(epoch FROM completed_at - requested_at)) STORED,
    -- Counted in the same transaction as each batch's deleted_at, so reruns after a crash add up exactly.
    items_deleted  integer NOT NULL DEFAULT 0 CHECK (items_deleted >= 0),
    bytes_deleted  bigint NOT NULL DEFAULT 0 CHECK (bytes_deleted >= 0),
    items_held     integer NOT NULL DEFAULT 0 CHECK (items_held >= 0),
    held_items     jsonb NOT NULL DEFAULT '[]'::jsonb,   -- [{id, path, kind, job_id}] kept by a legal hold
    rows_deleted   jsonb NOT NULL DEFAULT '{}'::jsonb,   -- {table: rows} of the derived rows deleted
    CONSTRAINT deletion_requests_completed_iff_done CHECK ((status = 'pending') = (completed_at IS NULL)),
    CONSTRAINT deletion_requests_completed_after_request CHECK (completed_at IS NULL OR completed_at >= requested_at),
    CONSTRAINT deletion_requests_due_after_request CHECK (due_at > requested_at),
    CONSTRAINT deletion_requests_hold_reported CHECK ((status = 'partial_hold') = (items_held > 0))
);
CREATE INDEX deletion_requests_user_idx ON deletion_requests (user_id);
-- What the purge sensor and the SLA check look at: the open requests, oldest first.
CREATE INDEX deletion_requests_pending_idx ON deletion_requests (requested_at) WHERE status = 'pending';

-- Consent-change events (consent/<user_id>/<timestamp>.json) already applied, by object key: applying an
-- event again changes nothing and writes no second audit entry, whatever a sensor's cursor says. The
-- sha256 catches a key rewritten with other content (refused, not silently ignored).
CREATE TABLE consent_events (
    object_key text PRIMARY KEY,
    user_id    uuid NOT NULL,
    event_at   timestamptz NOT NULL,
    sha256     text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    outcome    text NOT NULL CHECK (outcome IN ('applied', 'unchanged', 'stale')),
    applied_at timestamptz NOT NULL,
    applied_by text NOT NULL
);
CREATE INDEX consent_events_user_idx ON consent_events (user_id, event_at);
