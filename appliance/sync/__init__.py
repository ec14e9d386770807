"""Replication to Spaces ("sync"): the outbox (the only place its SQL lives), the S3 client
(spaces: it only talks to S3), the worker that drains the outbox and prunes local copies,
and the worker's metrics (served on their own port).

May import: settings, database, storage, progress."""
