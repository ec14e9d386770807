"""The process `raiox serve` becomes: uvicorn with JSON logs, without the CLI's imports.

With several workers, each is its own process with its own metrics: they share them through
PROMETHEUS_MULTIPROC_DIR (appliance.metrics). A directory given in the environment (the api
image sets one) is emptied first, since values left by a previous run would be added to the
new ones; with several workers and none given, a temporary one is used. The variable must be
set before any worker imports prometheus_client, which is why it is handled here, first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_metrics_dir(workers: int) -> Path | None:
    """Returns the directory this call created (to remove at exit), if any."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return None
    if workers > 1:
        created = Path(tempfile.mkdtemp(prefix="raiox-metrics-"))
        os.environ[MULTIPROC_ENV] = str(created)
        return created
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="raiox serve")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    created = prepare_metrics_dir(args.workers)
    import uvicorn

    from appliance.logs import LOG_CONFIG

    try:
        uvicorn.run(
            "appliance.asgi:app",
            host=args.host,
            port=args.port,
            workers=args.workers,
            proxy_headers=True,
            log_config=LOG_CONFIG,
            access_log=False,  # appliance.api.observability logs each request, without its path
        )
    finally:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)


if __name__ == "__main__":
    main()
