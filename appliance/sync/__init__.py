"""Replication to Spaces ("sync"): the outbox (the only place its SQL lives), the S3 client
(spaces: it only talks to S3), and the worker that drains the outbox and prunes local copies.

May import: settings, database, storage, progress."""
