"""Log format and levels for every entry point (CLI, server process, workers)."""

from __future__ import annotations

import logging


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # pgserver narrates every pg_ctl call; httpx logs full URLs (tokens, file names) at INFO.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
