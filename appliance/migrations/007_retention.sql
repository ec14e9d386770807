-- Patient-data retention (appliance/retention.py, RAIOX_RETENTION_DAYS).

-- When a submission's personal data (names, e-mail, ids that lead to a person, the image and
-- its Spaces copy) was erased by the retention; the row, its matches and labels stay.
ALTER TABLE submissions ADD COLUMN personal_data_erased_at timestamptz;
-- The runs look for the oldest submissions not erased yet.
CREATE INDEX submissions_retention_due ON submissions (created_at)
    WHERE personal_data_erased_at IS NULL;

-- Whether an image's bytes are still used elsewhere (keys are content addresses): one index
-- lookup per key instead of a scan, for erasures and retention runs alike.
CREATE INDEX submission_images_storage_key ON submission_images (storage_key)
    WHERE storage_key IS NOT NULL;
CREATE INDEX reference_images_storage_key ON reference_images (storage_key);

-- At most one row: when a run was last started and finished, so the several processes that
-- run the retention (api workers and replicas, sync workers) run it once per interval between
-- them. Written by the first run (an empty table keeps a fresh database a valid restore target).
CREATE TABLE retention_state (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    last_started_at timestamptz NOT NULL,
    last_finished_at timestamptz
);
