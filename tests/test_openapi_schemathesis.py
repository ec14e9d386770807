"""The OpenAPI document tells the truth: schemathesis, with every check, against a live
appliance (closed, with a key), finds nothing. Bounded: a few examples per operation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.fixtures.live_server import live_server

# One secret serves as the API key and as the webhook token, so one Authorization header
# reaches every operation.
MAX_EXAMPLES = "5"  # ~360 cases, about a minute here
CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_schemathesis_finds_no_failure(database_url: str, model_dir: Path) -> None:
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert cli, "schemathesis is a dev dependency"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAIOX_")}
    env.update(RAIOX_DATABASE_URL=database_url, RAIOX_DATA_DIR="/tmp")
    made = subprocess.run(
        [sys.executable, "-m", "appliance", "apikey", "create", "schemathesis"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    settings = {
        "RAIOX_OPEN_ACCESS": "0",
        "RAIOX_WEBHOOK_TOKEN": key,
        "RAIOX_RATE_LIMIT_KEY_PER_MINUTE": "0",
        "RAIOX_RATE_LIMIT_ADDRESS_PER_MINUTE": "0",
        "RAIOX_DOWNLOAD_TIMEOUT_SECONDS": "2",
    }
    with live_server(database_url, model_dir, env=settings) as server:
        run = subprocess.run(
            [
                cli,
                "--config-file",
                str(CONFIG),
                "run",
                f"{server.url}/docs/openapi.json",
                "--checks",
                "all",
                "--max-examples",
                MAX_EXAMPLES,
                # One worker: CPython 3.11's ast module keeps its recursion depth per process,
                # so hypothesis parsing lambdas on two threads at once fails with SystemError.
                "--workers",
                "1",
                "--seed",
                "20251125",
                "--request-timeout",
                "30",
                "--header",
                f"Authorization: Bearer {key}",
                "--max-redirects",
                "0",
            ],
            cwd=server.data_dir,  # its cache folder lands there, not in the repository
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert run.returncode == 0, run.stdout[-12000:] + run.stderr[-3000:]
