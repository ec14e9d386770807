"""What the deploy test asks of a running stack, through its proxy only (tests/e2e/deploy.sh).

The API is closed by default: `RAIOX_E2E_API_KEY` holds a key made in the stack (`raiox apikey
create`), and an upload without it must be refused.
`checks.py use URL TOKEN STATE`: /healthcheck answers 200 with an UNTRAINED model, an upload and a
Jotform delivery each answer three matches (a rendered demo implant must come back first), and
what was seen (catalog size, submission ids and their answers) is written to STATE.
`checks.py same URL STATE`: the appliance answers again with that data: same catalog, the same
submissions with the same matches.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from appliance.catalog.demo import DEMO_IMPLANTS, png_bytes, render_reference


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


def main(argv: list[str]) -> int:
    if argv[:1] == ["use"] and len(argv) == 4:
        use(argv[1], argv[2], Path(argv[3]))
    elif argv[:1] == ["same"] and len(argv) == 3:
        same(argv[1], Path(argv[2]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
