"""Container healthcheck for the appliance image (installed as /usr/local/bin/raiox-probe).

`raiox-probe URL` passes when URL answers 2xx; `raiox-probe postgres` passes when the database
in RAIOX_DATABASE_URL answers a query (its certificate verified against RAIOX_DATABASE_CA_FILE
when set, as the appliance does: appliance.tls). The worker containers (sync, backup) have no
HTTP server of their own that every version carries, so their health is "can reach the queue
it works on".
Standard library plus asyncpg only: it runs every few seconds and must start fast.
"""

import asyncio
import os
import sys
import urllib.parse
import urllib.request


def _http(url: str) -> None:
    with urllib.request.urlopen(url, timeout=5) as response:
        if not 200 <= response.status < 300:
            raise RuntimeError(f"{url} answered {response.status}")


def _postgres() -> None:
    import asyncpg

    url = os.environ["RAIOX_DATABASE_URL"]
    ca_file = os.environ.get("RAIOX_DATABASE_CA_FILE")
    if ca_file:
        url += ("&" if "?" in url else "?") + "sslrootcert=" + urllib.parse.quote(ca_file, safe="/")

    async def query() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    asyncio.run(query())


def main() -> int:
    target = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000/healthcheck"
    try:
        _postgres() if target == "postgres" else _http(target)
    except Exception as exc:  # any failure is "unhealthy"; say which, without secrets
        print(f"unhealthy: {type(exc).__name__}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
