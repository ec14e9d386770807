-- Replication bookkeeping: which worker holds a row's lease (so a worker that lost its lease
-- cannot clobber the new holder's state) and when the local copy was pruned after replication.
ALTER TABLE outbox
    ADD COLUMN lease_owner text,
    ADD COLUMN local_pruned_at timestamptz;
CREATE INDEX outbox_prunable ON outbox (created_at)
    WHERE state = 'done' AND local_pruned_at IS NULL;
