-- The catalog, the submissions with their ranked matches, and the replication outbox.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE implants (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    manufacturer text NOT NULL,
    type text NOT NULL DEFAULT '',
    platform text,
    diameter_mm real,
    length_mm real,
    notes text,
    synthetic boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (manufacturer, name)
);

-- Several reference images per implant; every vector records the model that made it.
CREATE TABLE reference_images (
    id bigserial PRIMARY KEY,
    implant_id bigint NOT NULL REFERENCES implants (id) ON DELETE CASCADE,
    storage_key text NOT NULL,
    sha256 text NOT NULL,
    model_id text NOT NULL,
    embedding vector(512) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (implant_id, sha256)
);
CREATE INDEX reference_images_model_id ON reference_images (model_id);

-- One row per delivery (upload, Jotform submission, webhook call). (source, external_id) is
-- unique so a redelivered webhook finds the submission it already created.
CREATE TABLE submissions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    source text NOT NULL,
    external_id text,
    result_token text NOT NULL UNIQUE,
    client_id text,
    dentist_name text,
    dentist_email text,
    patient_name text,
    tooth text,
    status text NOT NULL CHECK (status IN ('received', 'processing', 'done', 'failed')),
    error text,
    attempts integer NOT NULL DEFAULT 0,
    payload jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source, external_id)
);
CREATE INDEX submissions_status ON submissions (status) WHERE status <> 'done';

-- The images of a submission (a Jotform submission may carry several).
CREATE TABLE submission_images (
    id bigserial PRIMARY KEY,
    submission_id uuid NOT NULL REFERENCES submissions (id) ON DELETE CASCADE,
    position integer NOT NULL,
    source_url text,
    sha256 text,
    storage_key text,
    content_type text,
    model_id text,
    model_pretrained boolean,
    status text NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    error text,
    UNIQUE (submission_id, position)
);

CREATE TABLE matches (
    submission_image_id bigint NOT NULL REFERENCES submission_images (id) ON DELETE CASCADE,
    rank smallint NOT NULL,
    implant_id bigint NOT NULL REFERENCES implants (id) ON DELETE CASCADE,
    reference_image_id bigint REFERENCES reference_images (id) ON DELETE SET NULL,
    similarity real NOT NULL,
    PRIMARY KEY (submission_image_id, rank)
);

-- Objects waiting to be replicated to Spaces; written in the same transaction as the row that
-- references the object, drained by `raiox sync`.
CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    storage_key text NOT NULL UNIQUE,
    sha256 text NOT NULL,
    size_bytes bigint NOT NULL,
    content_type text NOT NULL,
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'dead')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    done_at timestamptz
);
CREATE INDEX outbox_pending ON outbox (next_attempt_at) WHERE state = 'pending';
