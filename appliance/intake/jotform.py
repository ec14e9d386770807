"""Jotform's webhook payload, as Jotform really sends it, turned into the seed's four fields and
the URLs of the uploaded radiographs; and the optional check of a submission with Jotform's API.

A Jotform webhook is a multipart POST whose `rawRequest` part is a JSON object of answers keyed
`q{N}_{uniqueName}` (N is the question id; Jotform appends N to a unique name that clashes, as
in `q7_email7`). A file-upload question is not answered under its `q{N}_` key: its files are
listed in `temp_upload` under `q{N}_{name}`, and their final URLs
(https://www.jotform.com/uploads/{username}/{formID}/{submissionID}/{file}) are under the bare
`{name}` key. Answers are matched by the part after `q{N}_`; forms named differently are mapped
with RAIOX_JOTFORM_FIELD_MAP (see FieldMap).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from appliance.errors import AppError, ServiceUnavailableError
from appliance.intake.fields import FILE_FIELD, JOTFORM_ID, TEXT_FIELDS

MAX_TEXT = 500
_QUESTION_KEY = re.compile(r"^q(\d+)_(.+)$")
_NAME_PARTS = ("prefix", "first", "middle", "last", "suffix")


class MalformedPayloadError(AppError):
    status_code = 400
    code = "malformed_payload"


class SubmissionNotConfirmedError(AppError):
    status_code = 403
    code = "submission_not_confirmed"


class JotformUnreachableError(ServiceUnavailableError):
    status_code = 502
    code = "jotform_unreachable"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, retry_after_s=60)


@dataclass(frozen=True)
class Question:
    qid: str | None
    name: str

    @property
    def refs(self) -> frozenset[str]:
        """Every way a field map may name this question: `name`, `qN`, `qN_name`."""
        name = self.name.lower()
        if self.qid is None:
            return frozenset({name})
        return frozenset({name, f"q{self.qid}", f"q{self.qid}_{name}"})

    @property
    def base_name(self) -> str:
        """The unique name without the question id Jotform appends on clashes (email7)."""
        name = self.name.lower()
        if self.qid and name.endswith(self.qid) and len(name) > len(self.qid):
            return name[: -len(self.qid)]
        return name


@dataclass(frozen=True)
class FieldMap:
    """RAIOX_JOTFORM_FIELD_MAP: `question=field` pairs, comma separated, where question is the
    form's unique name (`nomeDentista`), its id (`q12`) or both (`q12_nomeDentista`),
    case-insensitive, and field is one of nome, email, paciente, dente, file. Several questions
    may feed one field (the first answered wins; every mapped upload question is used). An
    unmapped field matches a question of its own name; an unmapped `file` takes every
    file-upload question."""

    sources: Mapping[str, frozenset[str]]  # our field -> the question refs that feed it

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> FieldMap:
        sources: dict[str, set[str]] = {}
        for question, field in pairs:
            sources.setdefault(field.lower(), set()).add(question.lower())
        return cls({field: frozenset(refs) for field, refs in sources.items()})

    def matches(self, field: str, question: Question) -> bool:
        refs = self.sources.get(field)
        if refs is not None:
            return not refs.isdisjoint(question.refs)
        return field == FILE_FIELD or field == question.base_name


@dataclass(frozen=True)
class JotformPost:
    """What one delivery to /jotform carries, whichever shape it came in."""

    submission_id: str | None
    form_id: str | None
    username: str | None
    text: dict[str, str]
    upload_urls: tuple[str, ...]


def read_post(form: Mapping[str, str], field_map: FieldMap) -> JotformPost:
    """The seed's shape (top-level nome/email/paciente/dente beside a `file` part) and the real
    one (rawRequest) alike; answers inside rawRequest win over top-level fields."""
    text = {f: v for f in TEXT_FIELDS if (v := clean_text(form.get(f)))}
    urls: tuple[str, ...] = ()
    raw = form.get("rawRequest")
    if raw is not None:
        answers = parse_raw_request(raw)
        text.update(read_text_answers(answers, field_map))
        urls = read_upload_urls(answers, field_map)
    return JotformPost(
        submission_id=_identifier(form.get("submissionID"), "submissionID"),
        form_id=_identifier(form.get("formID"), "formID"),
        username=clean_text(form.get("username")),
        text=text,
        upload_urls=urls,
    )


def parse_raw_request(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise MalformedPayloadError(
            f"rawRequest is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}."
        ) from None
    except RecursionError:  # 100,000 nested brackets: the parser's stack, not ours, gives up
        raise MalformedPayloadError("rawRequest nests too deeply to be a form's answers.") from None
    except ValueError:  # an integer past Python's 4,300-digit conversion limit
        raise MalformedPayloadError("rawRequest holds a number too long to read.") from None
    if not isinstance(value, dict):
        raise MalformedPayloadError(
            f"rawRequest must be a JSON object of answers, not a JSON {type(value).__name__}."
        )
    return value


def read_text_answers(answers: Mapping[str, Any], field_map: FieldMap) -> dict[str, str]:
    questions = [
        (Question(m[1], m[2]), value)
        for key, value in answers.items()
        if (m := _QUESTION_KEY.match(key))
    ]
    found: dict[str, str] = {}
    for field in TEXT_FIELDS:
        for question, value in questions:
            text = clean_text(as_text(value)) if field_map.matches(field, question) else None
            if text:
                found[field] = text
                break
    return found


def read_upload_urls(answers: Mapping[str, Any], field_map: FieldMap) -> tuple[str, ...]:
    """The URLs of the file-upload questions the map selects, in form order, without repeats."""
    declared = _declared_uploads(answers.get("temp_upload"))
    urls: list[str] = []
    for key, value in answers.items():
        m = _QUESTION_KEY.match(key)
        question = Question(m[1], m[2]) if m else Question(declared.get(key.lower()), key)
        is_declared = question.name.lower() in declared
        if declared and not is_declared:
            continue  # the form says which questions are uploads: trust only those
        found = _urls(value, single_allowed=is_declared)
        if found and field_map.matches(FILE_FIELD, question):
            urls.extend(u for u in found if u not in urls)
    return tuple(urls)


def as_text(value: Any) -> str | None:
    """An answer as text: full-name objects joined in name order, lists comma separated."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return ", ".join(t for item in value if (t := clean_text(as_text(item))))
    if isinstance(value, dict):
        keys = [k for k in _NAME_PARTS if k in value] or list(value)
        return " ".join(t for k in keys if (t := clean_text(as_text(value[k]))))
    return None


def clean_text(value: str | None) -> str | None:
    text = " ".join((value or "").split())
    return text[:MAX_TEXT] or None


def _identifier(value: str | None, name: str) -> str | None:
    text = (value or "").strip()
    if not text:
        return None
    if not JOTFORM_ID.match(text):
        raise MalformedPayloadError(f"{name} must be 1-64 letters, digits, '-' or '_'.")
    return text


def _declared_uploads(temp_upload: Any) -> dict[str, str | None]:
    """Upload question names (lowercase) -> question id, from rawRequest's temp_upload."""
    if not isinstance(temp_upload, dict):
        return {}
    declared: dict[str, str | None] = {}
    for key in temp_upload:
        m = _QUESTION_KEY.match(str(key))
        if m:
            declared[m[2].lower()] = m[1]
    return declared


def _urls(value: Any, *, single_allowed: bool) -> list[str]:
    if isinstance(value, str) and single_allowed:
        value = [value]
    if not isinstance(value, list):
        return []
    items = [item.strip() for item in value if isinstance(item, str) and item.strip()]
    if not items or len(items) != len(value):
        return []
    if not all(item.lower().startswith(("http://", "https://")) for item in items):
        return []
    return items


@dataclass(frozen=True)
class JotformApi:
    """Asks Jotform whether a submission exists (GET /submission/{id}), so a forged delivery
    with a leaked webhook token is not processed. The key travels in the APIKEY header, never in
    a URL that a log could keep."""

    base_url: str
    api_key: str
    timeout_s: float

    async def confirm(self, submission_id: str, form_id: str) -> None:
        url = f"{self.base_url.rstrip('/')}/submission/{submission_id}"
        try:
            async with httpx.AsyncClient(
                follow_redirects=False, trust_env=False, timeout=self.timeout_s
            ) as client:
                response = await client.get(url, headers={"APIKEY": self.api_key})
        except httpx.HTTPError as exc:
            raise JotformUnreachableError(
                f"Could not ask Jotform to confirm the submission ({type(exc).__name__})."
            ) from None
        if response.status_code >= 500:
            raise JotformUnreachableError(f"Jotform's API answered HTTP {response.status_code}.")
        content = _content(response)
        if (
            content is None
            or str(content.get("id")) != submission_id
            or str(content.get("form_id")) != form_id
        ):
            raise SubmissionNotConfirmedError(
                "Jotform does not confirm this submission for this form; it was not processed."
            )


def _content(response: httpx.Response) -> dict[str, Any] | None:
    """Jotform wraps answers as {"responseCode": 200, "content": {...}}."""
    try:
        body = response.json()
    except ValueError:
        return None
    if response.status_code != 200 or not isinstance(body, dict):
        return None
    if body.get("responseCode", 200) != 200 or not isinstance(body.get("content"), dict):
        return None
    content: dict[str, Any] = body["content"]
    return content
