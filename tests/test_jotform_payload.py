"""Jotform's payload shapes, the field map, the upload-URL allowlist and where the API key may go:
pure functions, no network and no database."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

import httpx
import pytest

from appliance.intake.downloads import (
    UploadOriginNotAllowedError,
    checked_url,
    normalize_origins,
    with_credentials,
)
from appliance.intake.jotform import FieldMap, MalformedPayloadError, as_text, read_post
from appliance.logs import keep_secrets_out_of_logs
from appliance.settings import DEFAULT_JOTFORM_ORIGINS, Settings, SettingsError

UPLOAD = "https://www.jotform.com/uploads/clinica/251488352368668/6295223450435068292/rx%201.png"


def jotform_json(value: Mapping[str, object]) -> str:
    """JSON the way Jotform's PHP encodes it: non-ASCII escaped, slashes escaped."""
    return json.dumps(value).replace("/", "\\/")


def real_raw_request() -> dict[str, object]:
    return {
        "slug": "submit/251488352368668",
        "submitSource": "form",
        "uploadServerUrl": "https://upload.jotform.com/upload",
        "q3_nome": {"first": "Ana", "last": "Souza"},
        "q4_email4": "ana@example.com",
        "q5_paciente": "João da Silva",
        "q6_dente": ["36"],
        "event_id": "1753713135766_251488352368668_a4qAzSy",
        "temp_upload": {"q7_radiografia": ["rx 1.png#jotformfs-bc35e2a4de105#0198"]},
        "file_server": "jotformfs-bc35e2a4de105#0198",
        "path": "/submit/251488352368668",
        "radiografia": [UPLOAD],
    }


def post_fields(raw: Mapping[str, object], **extra: str) -> dict[str, str]:
    return {
        "formID": "251488352368668",
        "submissionID": "6295223450435068292",
        "username": "clinica",
        "type": "WEB",
        "pretty": "Nome:Ana Souza, Radiografia:rx 1.png",
        "rawRequest": jotform_json(raw),
        **extra,
    }


def test_real_payload_gives_fields_and_upload_urls() -> None:
    post = read_post(post_fields(real_raw_request()), FieldMap.from_pairs(()))
    assert post.submission_id == "6295223450435068292"
    assert post.form_id == "251488352368668"
    assert post.text == {
        "nome": "Ana Souza",
        "email": "ana@example.com",  # q4_email4: Jotform's clash suffix is dropped
        "paciente": "João da Silva",
        "dente": "36",
    }
    assert post.upload_urls == (UPLOAD,)


def test_only_declared_upload_questions_are_files() -> None:
    raw = real_raw_request() | {"q9_site": ["https://www.jotform.com/form/1"]}
    assert read_post(post_fields(raw), FieldMap.from_pairs(())).upload_urls == (UPLOAD,)
    # without temp_upload (older or hand-made payloads) a qN_ list of URLs is an upload answer
    legacy = {"q3_nome": "Ana", "q7_radiografia": [UPLOAD, UPLOAD + "2"]}
    assert read_post(post_fields(legacy), FieldMap.from_pairs(())).upload_urls == (
        UPLOAD,
        UPLOAD + "2",
    )


def test_field_map_by_name_id_or_both() -> None:
    raw = {
        "q12_nomeDoDentista": {"prefix": "Dr.", "first": "Caio", "last": "Lima"},
        "q13_contato13": "caio@example.com",
        "q14_quemE": "Maria",
        "q20_numeroDoDente": "11",
        "temp_upload": {"q30_fotoRx": ["a.png"], "q31_documento": ["b.pdf"]},
        "fotoRx": [UPLOAD],
        "documento": ["https://www.jotform.com/uploads/x/1/2/b.pdf"],
    }
    pairs = (
        ("nomeDoDentista", "nome"),
        ("q13", "email"),
        ("q14_quemE", "paciente"),
        ("NUMERODODENTE", "dente"),
        ("q30", "file"),
    )
    post = read_post(post_fields(raw), FieldMap.from_pairs(pairs))
    assert post.text == {"nome": "Dr. Caio Lima", "email": "caio@example.com",
                         "paciente": "Maria", "dente": "11"}  # fmt: skip
    assert post.upload_urls == (UPLOAD,)
    unmapped = read_post(post_fields(raw), FieldMap.from_pairs(()))
    assert unmapped.text == {}
    assert len(unmapped.upload_urls) == 2  # every upload question by default


def test_seed_shape_fields_and_answers_win() -> None:
    seed = read_post({"nome": "  Dr.  X ", "dente": "21"}, FieldMap.from_pairs(()))
    assert seed.text == {"nome": "Dr. X", "dente": "21"}
    assert seed.submission_id is None and seed.upload_urls == ()
    both = read_post(post_fields(real_raw_request(), dente="48"), FieldMap.from_pairs(()))
    assert both.text["dente"] == "36"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"q3_nome": "Ana",', "line 1 column 19"),
        ("[1, 2]", "JSON object"),
        ("", "not valid JSON"),
    ],
)
def test_malformed_raw_request_says_what_is_wrong(raw: str, message: str) -> None:
    with pytest.raises(MalformedPayloadError) as caught:
        read_post({"rawRequest": raw}, FieldMap.from_pairs(()))
    assert message in caught.value.detail
    assert caught.value.status_code == 400


def test_bad_submission_id_is_refused() -> None:
    with pytest.raises(MalformedPayloadError, match="submissionID"):
        read_post({"submissionID": "../../etc"}, FieldMap.from_pairs(()))


def test_answers_as_text() -> None:
    assert as_text({"first": "A", "last": "B", "middle": ""}) == "A B"
    assert as_text(["1", 2, None, ""]) == "1, 2"
    assert as_text(True) is None and as_text(None) is None
    assert as_text({"area": "81", "phone": "9999"}) == "81 9999"


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://www.jotform.com/uploads/a/1/2/x.png", True),
        ("https://WWW.JOTFORM.COM:443/uploads/x.png", True),
        ("https://eu.jotform.com/uploads/x.png", True),
        ("http://www.jotform.com/uploads/x.png", False),
        ("https://www.jotform.com:8443/uploads/x.png", False),
        ("https://www.jotform.com.evil.example/x.png", False),
        ("https://evil.example/?u=https://www.jotform.com/x.png", False),
        ("https://user:pw@www.jotform.com/x.png", False),
        ("ftp://www.jotform.com/x.png", False),
        ("file:///etc/passwd", False),
        ("/uploads/x.png", False),
        ("http://169.254.169.254/latest/meta-data/", False),
        ("http://[::1]:8000/x", False),
    ],
)
def test_upload_origins_are_compared_exactly(url: str, allowed: bool) -> None:
    origins = normalize_origins(DEFAULT_JOTFORM_ORIGINS)
    if allowed:
        assert checked_url(url, origins).path.endswith(".png")
    else:
        with pytest.raises(UploadOriginNotAllowedError):
            checked_url(url, origins)


def test_loopback_origin_with_port_when_listed() -> None:
    origins = normalize_origins(["http://127.0.0.1:8123", "http://[::1]:8000"])
    assert checked_url("http://127.0.0.1:8123/f", origins)
    assert checked_url("http://[::1]:8000/f", origins)
    with pytest.raises(UploadOriginNotAllowedError):
        checked_url("http://127.0.0.1:8124/f", origins)


@pytest.mark.parametrize(
    ("url", "gets_key"),
    [
        ("https://www.jotform.com/uploads/x.png", True),
        ("https://hipaa.jotform.com/uploads/x.png", True),
        ("https://api.jotform.com/submission/1", True),
        ("http://www.jotform.com/uploads/x.png", False),
        ("https://jotform.com.evil.example/x.png", False),
        ("https://evil-jotform.com/x.png", False),
        ("http://127.0.0.1:8123/x.png", False),
    ],
)
def test_api_key_only_goes_to_jotform_over_https(url: str, gets_key: bool) -> None:
    sent_url, headers = with_credentials(httpx.URL(url), "SECRET")
    assert ("SECRET" in str(sent_url)) is gets_key
    assert (headers.get("APIKEY") == "SECRET") is gets_key
    assert with_credentials(httpx.URL(url), None) == (httpx.URL(url), {})


def test_settings_refuse_unknown_mapped_fields_and_verification_without_key() -> None:
    env = {"RAIOX_JOTFORM_FIELD_MAP": "nomeDoDentista=nome,q9=cpf"}
    with pytest.raises(SettingsError, match="cpf"):
        Settings.from_env(env, env_file=None)
    env = {"RAIOX_JOTFORM_VERIFY_SUBMISSIONS": "1"}
    with pytest.raises(SettingsError, match="API_KEY"):
        Settings.from_env(env, env_file=None)
    env = {"RAIOX_JOTFORM_FIELD_MAP": "nomeDoDentista=nome, q30=file, q31=file"}
    pairs = Settings.from_env(env, env_file=None).jotform.field_map
    assert pairs == (("nomeDoDentista", "nome"), ("q30", "file"), ("q31", "file"))
    assert FieldMap.from_pairs(pairs).sources["file"] == {"q30", "q31"}


def test_access_log_keeps_no_tokens() -> None:
    keep_secrets_out_of_logs()
    access = logging.getLogger("uvicorn.access")
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("1.2.3.4:5", "GET", "/results/AbCdEfGhIjKlMnOpQrStUvWx/images/0?token=s3cret&n=1",
         "1.1", 200),
        None,
    )  # fmt: skip
    for f in access.filters:
        assert isinstance(f, logging.Filter)
        f.filter(record)
    line = record.getMessage()
    assert "s3cret" not in line and "AbCdEfGhIjKlMnOpQrStUvWx" not in line
    assert "/results/[redacted]/images/0?token=[redacted]&n=1" in line
