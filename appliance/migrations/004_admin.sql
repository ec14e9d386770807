-- The staff console: accounts, sessions, the audit log, archived implants, confirmed labels
-- and the remote copies an erasure could not delete yet.

CREATE TABLE admin_users (
    id bigserial PRIMARY KEY,
    username text NOT NULL UNIQUE,
    password_hash text NOT NULL,            -- argon2id, with its parameters and salt
    role text NOT NULL CHECK (role IN ('admin', 'staff')),
    failed_attempts integer NOT NULL DEFAULT 0,
    locked_until timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_login_at timestamptz
);

-- Server-side sessions: the cookie carries a signed random token whose sha256 is the key, so
-- sign-out ends a session for good and a database dump reveals no usable cookie.
CREATE TABLE admin_sessions (
    token_sha256 text PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES admin_users (id) ON DELETE CASCADE,
    csrf_token text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX admin_sessions_expires ON admin_sessions (expires_at);

-- Who created, changed, confirmed or erased what, and when. `actor` is a username, or
-- 'dentist' for a confirmation through a result link; never patient data in `detail`.
CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    actor text NOT NULL,
    action text NOT NULL,
    target text NOT NULL,
    detail jsonb
);
CREATE INDEX audit_log_at ON audit_log (at DESC);

-- An implant that submissions refer to is archived, not deleted: its matches stay readable
-- while search no longer proposes it.
ALTER TABLE implants ADD COLUMN archived_at timestamptz;

-- The confirmed implant of a submitted radiograph (one per image), by the dentist through the
-- result link or by staff. RESTRICT: a labelled implant can only be archived.
CREATE TABLE image_labels (
    submission_image_id bigint PRIMARY KEY
        REFERENCES submission_images (id) ON DELETE CASCADE,
    implant_id bigint NOT NULL REFERENCES implants (id) ON DELETE RESTRICT,
    confirmed_by text NOT NULL,
    confirmed_at timestamptz NOT NULL DEFAULT now(),
    promoted_reference_id bigint REFERENCES reference_images (id) ON DELETE SET NULL
);
CREATE INDEX image_labels_confirmed_at ON image_labels (confirmed_at);

-- Spaces copies of erased images still to delete (Spaces was unreachable at erasure time).
CREATE TABLE pending_erasures (
    storage_key text PRIMARY KEY,
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Catalog imports started from the console (a CSV/JSON manifest + images in a zip), with
-- their progress, so any worker process can show it.
CREATE TABLE import_jobs (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    started_by text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    state text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'done', 'failed')),
    total integer NOT NULL DEFAULT 0,
    done integer NOT NULL DEFAULT 0,
    message text
);
