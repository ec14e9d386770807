"""Backups of the appliance database and their restore (`raiox backup`, `raiox restore`).

A backup is a pg_dump custom-format archive `raiox-<UTC timestamp>.dump` with a manifest
`raiox-<UTC timestamp>.json` beside it (model id, schema version, row counts per table, sha256
and size of the dump). The row counts come from the very snapshot pg_dump reads (an exported
snapshot), so a restore can check that it got back exactly what was dumped. `latest.json` is
rewritten last, atomically, and only on success: monitoring reads the time of the last good
backup from it. The newest N backups are kept.

Image files are not in the dump: they live on disk (and in Spaces), addressed by their sha256.

A restore verifies the archive against its manifest before touching anything, refuses a target
that holds data unless forced, restores in one transaction (a failure leaves the target as it
was), applies this version's migrations and compares the row counts with the manifest.

Modules: archive (the files: manifest, latest.json, retention), create, restore, pgtools (the
pg_dump/pg_restore adapter), status (the gauge; the only module the api imports).
May import: database, errors, progress, sync (the Spaces client, only for `--spaces`).
"""
