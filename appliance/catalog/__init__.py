"""The reference implant catalog: its repository and search (repository), loading it from a
manifest and re-embedding it (importer), and the synthetic demo catalog (demo).

May import: errors, progress, storage, sync.outbox, identification (the importer embeds)."""
