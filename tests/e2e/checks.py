"""What the deploy test asks of a running stack, through its proxy only (tests/e2e/deploy.sh).

The API is closed by default: `RAIOX_E2E_API_KEY` holds a key made in the stack (`raiox apikey
create`), and an upload without it must be refused.
`checks.py use URL TOKEN STATE`: /healthcheck answers 200 with an UNTRAINED model, an upload and a
Jotform delivery each answer three matches (a rendered demo implant must come back first), and
what was seen (catalog size, submission ids and their answers) is written to STATE.
`checks.py same URL STATE`: the appliance answers again with that data: same catalog, the same
submissions with the same matches.
`checks.py replicas URL TOKEN N`: N api replicas each healthy and each serving requests through
the proxy; a Jotform redelivery (and a webhook retry with the same Idempotency-Key) that reaches
the other replica answers the stored result; replica 2 stopped (SIGTERM) under 200 uploads at
concurrency 8 loses no accepted upload, and clients see errors only for requests in flight.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from appliance.catalog.demo import (
    DEMO_IMPLANTS,
    png_bytes,
    render_patient_sample,
    render_reference,
)


def _healthy(client: httpx.Client) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        response = client.get("/healthcheck")
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["model"]["pretrained"] is False, body  # the e2e model is random: said so
    return body


def _matches(answer: dict[str, Any]) -> list[tuple[int, str]]:
    return [(m["rank"], m["implant"]["name"]) for m in answer["matches"]]


def _catalog_size(client: httpx.Client) -> int:
    response = client.get("/implants", params={"limit": 1})
    assert response.status_code == 200, response.text
    return int(response.json()["total"])


def _radiograph(index: int) -> dict[str, tuple[str, bytes, str]]:
    return {"file": ("rx.png", png_bytes(render_reference(DEMO_IMPLANTS[index], 0)), "image/png")}


def _client(url: str) -> httpx.Client:
    key = os.environ["RAIOX_E2E_API_KEY"]
    return httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {key}"})


def use(url: str, token: str, state: Path) -> None:
    anonymous = httpx.post(f"{url}/upload", files=_radiograph(5), timeout=60)
    assert anonymous.status_code == 401, "the API must be closed without a key"
    with _client(url) as client:
        _healthy(client)
        catalog = _catalog_size(client)
        assert catalog == len(DEMO_IMPLANTS), catalog

        upload = client.post(
            "/upload",
            files=_radiograph(5),
            data={"nome": "Dra. Teste", "dente": "36"},
        )
        assert upload.status_code == 200, upload.text
        uploaded = upload.json()
        assert len(uploaded["matches"]) == 3, uploaded
        assert uploaded["matches"][0]["implant"]["name"] == DEMO_IMPLANTS[5].name, uploaded

        wrong = client.post("/jotform", params={"token": "wrong"}, data={"submissionID": "1"})
        assert wrong.status_code == 401, wrong.text
        jotform_id = str(uuid.uuid4().int)[:19]
        delivery = client.post(
            "/jotform",
            params={"token": token},
            data={"nome": "Dr. Jot", "email": "jot@example.com", "submissionID": jotform_id},
            files=_radiograph(9),
        )
        assert delivery.status_code == 200, delivery.text
        delivered = delivery.json()
        assert len(delivered["matches"]) == 3, delivered
        assert delivered["matches"][0]["implant"]["name"] == DEMO_IMPLANTS[9].name, delivered

        metrics = client.get("/metrics")
        assert metrics.status_code == 404, "the proxy must not publish /metrics"

    submissions = {answer["submission_id"]: _matches(answer) for answer in (uploaded, delivered)}
    state.write_text(json.dumps({"catalog": catalog, "submissions": submissions}))
    print(f"identified an upload and a Jotform delivery; catalog of {catalog} implants")


def same(url: str, state: Path) -> None:
    seen = json.loads(state.read_text())
    with _client(url) as client:
        _healthy(client)
        assert _catalog_size(client) == seen["catalog"]
        for submission_id, matches in seen["submissions"].items():
            response = client.get(f"/submissions/{submission_id}")
            assert response.status_code == 200, (submission_id, response.text)
            assert [list(m) for m in _matches(response.json())] == matches, submission_id
    print(f"same catalog ({seen['catalog']} implants) and {len(seen['submissions'])} submissions")


# --- Replicas (`checks.py replicas URL TOKEN`) ------------------------------------------------
# Each api replica is reached inside its own container (`docker exec raiox-api-N`), never
# through a port of its own: the stack publishes only the proxy's.

REPLICA_REQUEST = """
import json, sys, urllib.error, urllib.request
method, url, headers = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
body = sys.stdin.buffer.read() or None
request = urllib.request.Request(url, data=body, headers=headers, method=method)
try:
    with urllib.request.urlopen(request, timeout=120) as response:
        status, data = response.status, response.read()
except urllib.error.HTTPError as error:
    status, data = error.code, error.read()
print(json.dumps({"status": status, "body": data.decode()}))
"""


def _replica(index: int) -> str:
    return f"raiox-api-{index}"


def _on_replica(index: int, request: httpx.Request) -> tuple[int, str]:
    """Send `request` to replica `index` from inside its container (127.0.0.1:8000)."""
    target = f"http://127.0.0.1:8000{request.url.raw_path.decode()}"
    headers = {
        k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
    }
    done = subprocess.run(
        [
            "docker",
            "exec",
            "-i",
            _replica(index),
            "python3",
            "-c",
            REPLICA_REQUEST,
            request.method,
            target,
            json.dumps(headers),
        ],
        input=request.read(),
        capture_output=True,
        check=True,
        timeout=180,
    )
    answer = json.loads(done.stdout)
    return int(answer["status"]), str(answer["body"])


def _served_counts(replicas: int) -> list[float]:
    """GET /implants answered so far by each replica (its own /metrics, inside the network)."""
    counts = []
    for index in range(1, replicas + 1):
        status, text = _on_replica(index, httpx.Request("GET", "http://replica/metrics"))
        assert status == 200, text
        counts.append(
            sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("raiox_http_requests_total{")
                and 'route="/implants"' in line
                and 'method="GET"' in line
            )
        )
    return counts


def _both_serve(url: str, replicas: int) -> None:
    for index in range(1, replicas + 1):
        status, body = _on_replica(index, httpx.Request("GET", "http://replica/healthcheck"))
        assert status == 200, (index, body)
    before = _served_counts(replicas)
    with _client(url) as client:
        for _ in range(30):
            assert client.get("/implants", params={"limit": 1}).status_code == 200
    gained = [after - b for after, b in zip(_served_counts(replicas), before, strict=True)]
    assert sum(gained) == 30 and all(g > 0 for g in gained), gained
    print(f"{replicas} replicas healthy; 30 requests through the proxy were spread {gained}")


def _redelivered_on_the_other_replica(token: str) -> None:
    """A Jotform delivery answered by replica 1, delivered again to replica 2 (Jotform retries),
    and a webhook with an Idempotency-Key the same way: the stored result, not a new one."""
    jotform_id = str(uuid.uuid4().int)[:19]
    jotform = httpx.Request(
        "POST",
        "http://replica/jotform",
        params={"token": token},
        data={"nome": "Dr. Retry", "submissionID": jotform_id},
        files=_radiograph(12),
    )
    key = f"e2e-{uuid.uuid4().hex}"
    image = base64.b64encode(png_bytes(render_reference(DEMO_IMPLANTS[14], 0))).decode()
    webhook = httpx.Request(
        "POST",
        "http://replica/webhook",
        params={"token": token},
        json={"image_base64": image, "nome": "Dr. Retry"},
        headers={"Idempotency-Key": key},
    )
    for request in (jotform, webhook):
        answers = []
        for index in (1, 2):
            status, body = _on_replica(index, request)
            assert status == 200, (index, body)
            answers.append(json.loads(body))
        first, again = answers
        assert again["submission_id"] == first["submission_id"], answers
        assert _matches(again) == _matches(first) and len(first["matches"]) == 3, answers
    print("a Jotform redelivery and a webhook retry on the other replica got the stored result")


def _upload(client: httpx.Client, image: bytes) -> tuple[int, dict[str, Any]]:
    """(status, answer); an error's answer says who gave it: the api's JSON or the proxy's."""
    try:
        response = client.post("/upload", files={"file": ("rx.png", image, "image/png")})
    except httpx.HTTPError as exc:
        return 0, {"error": type(exc).__name__}  # no answer at all: counted with the errors
    if response.status_code == 200:
        return 200, response.json()
    return response.status_code, {"error": response.text[:160] or "(empty body: the proxy)"}


def _stop_one_under_load(url: str, uploads: int = 200, concurrency: int = 8) -> None:
    """`docker stop` (SIGTERM) replica 2 while `uploads` uploads run at `concurrency`: every
    upload answered 200 is stored with its matches; errors only for requests in flight."""
    answered = threading.Semaphore(0)
    stopper: dict[str, Any] = {}

    def stop_after(count: int) -> None:
        for _ in range(count):
            answered.acquire()
        started = time.monotonic()
        subprocess.run(["docker", "stop", _replica(2)], check=True, capture_output=True)
        stopper["seconds"] = time.monotonic() - started

    def one(client: httpx.Client, index: int) -> tuple[int, dict[str, Any]]:
        implant = DEMO_IMPLANTS[index % len(DEMO_IMPLANTS)]
        result = _upload(client, png_bytes(render_patient_sample(implant, 1000 + index)))
        answered.release()
        return result

    thread = threading.Thread(target=stop_after, args=(uploads // 5,))
    thread.start()
    started = time.monotonic()
    with _client(url) as client, ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda index: one(client, index), range(uploads)))
    elapsed = time.monotonic() - started
    thread.join()
    statuses = Counter(status for status, _ in results)
    failed = sum(n for status, n in statuses.items() if not 200 <= status < 300)
    print(
        f"{uploads} uploads at concurrency {concurrency} in {elapsed:.1f} s, replica 2 stopped "
        f"after {uploads // 5} (docker stop took {stopper.get('seconds', 0):.1f} s): "
        f"answers {dict(statuses)}; non-2xx seen by clients: {failed}"
    )
    errors = Counter(f"{status} {answer['error']}" for status, answer in results if status != 200)
    for error, count in errors.items():
        print(f"  {count} x {error}")
    assert failed <= concurrency, f"{failed} errors: more than the requests in flight"
    with _client(url) as client:
        for status, answer in results:
            if status != 200:
                continue
            stored = client.get(f"/submissions/{answer['submission_id']}")
            assert stored.status_code == 200, stored.text
            assert _matches(stored.json()) == _matches(answer), answer["submission_id"]
    print(f"all {statuses[200]} accepted uploads are stored with their matches")


def replicas(url: str, token: str, count: int) -> None:
    _both_serve(url, count)
    _redelivered_on_the_other_replica(token)
    _stop_one_under_load(url)


def main(argv: list[str]) -> int:
    if argv[:1] == ["use"] and len(argv) == 4:
        use(argv[1], argv[2], Path(argv[3]))
    elif argv[:1] == ["same"] and len(argv) == 3:
        same(argv[1], Path(argv[2]))
    elif argv[:1] == ["replicas"] and len(argv) == 4:
        replicas(argv[1], argv[2], int(argv[3]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
