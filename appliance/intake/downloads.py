"""Fetching uploaded files by URL, as safely as a server that fetches URLs it was sent can.

Whoever can call a webhook chooses these URLs, so this is a server-side request forgery
surface. The defences, in order: only http(s); the URL's origin (scheme://host[:port], exactly)
must be on an allowlist; redirects are followed by hand, at most MAX_REDIRECTS, and every hop is
checked against the same allowlist; the body is streamed with a byte cap and the whole fetch,
redirects included, runs under one deadline; no proxy, .netrc or cookie from the environment is
used; and the Jotform API key is attached only to https URLs on Jotform's own hosts, so a
redirect or a misconfigured allowlist can never hand it to someone else. Error details never
contain the URL: a query string may carry the key, and a file name may carry a patient's name.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

from appliance.errors import AppError, ServiceUnavailableError

MAX_REDIRECTS = 3
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
JOTFORM_DOMAIN = "jotform.com"
USER_AGENT = "raiox-appliance"


class UploadOriginNotAllowedError(AppError):
    status_code = 422
    code = "upload_origin_not_allowed"


class DownloadTooLargeError(AppError):
    status_code = 422
    code = "download_too_large"


class DownloadTimeoutError(AppError):
    status_code = 422
    code = "download_timeout"


class DownloadFailedError(ServiceUnavailableError):
    """The upload server could not be reached or refused the file. 502 (a 5xx, with
    Retry-After) tells a webhook sender the delivery was not handled, so one that retries will
    redeliver; the submission is already stored as failed, so a redelivery or
    `raiox submissions retry` picks it up and nothing is lost if the sender never retries."""

    status_code = 502
    code = "download_failed"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, retry_after_s=60)


def origin_of(url: httpx.URL) -> str:
    """scheme://host[:port] in the form origins are compared in (default ports dropped)."""
    port = f":{url.port}" if url.port is not None else ""
    host = url.raw_host.decode("ascii").lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{url.scheme}://{host}{port}"


def normalize_origins(origins: Iterable[str]) -> frozenset[str]:
    return frozenset(origin_of(httpx.URL(origin)) for origin in origins)


def checked_url(url: str | httpx.URL, allowed: frozenset[str]) -> httpx.URL:
    """The parsed URL if it may be fetched, else UploadOriginNotAllowedError (no network)."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise UploadOriginNotAllowedError("An upload URL is not a valid URL.") from None
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise UploadOriginNotAllowedError("Upload URLs must be absolute http(s) URLs.")
    if parsed.userinfo:
        raise UploadOriginNotAllowedError("Upload URLs must not carry credentials.")
    if origin_of(parsed) not in allowed:
        raise UploadOriginNotAllowedError(
            f"Files are only fetched from the allowed origins (RAIOX_JOTFORM_UPLOAD_ORIGINS); "
            f"{origin_of(parsed)} is not one of them."
        )
    return parsed


def is_jotform_host(url: httpx.URL) -> bool:
    host = url.raw_host.decode("ascii").lower()
    return url.scheme == "https" and (host == JOTFORM_DOMAIN or host.endswith("." + JOTFORM_DOMAIN))


def with_credentials(url: httpx.URL, api_key: str | None) -> tuple[httpx.URL, dict[str, str]]:
    """Private uploads need the account's key (query `apiKey` and header `APIKEY`); it is only
    ever attached to https URLs on Jotform's own hosts."""
    if not api_key or not is_jotform_host(url):
        return url, {}
    return url.copy_merge_params({"apiKey": api_key}), {"APIKEY": api_key}


@dataclass(frozen=True)
class Downloader:
    allowed_origins: frozenset[str]
    max_bytes: int
    timeout_s: float
    jotform_api_key: str | None = None

    @classmethod
    def create(
        cls,
        origins: Iterable[str],
        *,
        max_bytes: int,
        timeout_s: float,
        jotform_api_key: str | None = None,
    ) -> Downloader:
        return cls(normalize_origins(origins), max_bytes, timeout_s, jotform_api_key)

    def check(self, url: str) -> httpx.URL:
        return checked_url(url, self.allowed_origins)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[DownloadSession]:
        """One HTTP client for the files of one submission."""
        async with httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(self.timeout_s),
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        ) as client:
            yield DownloadSession(self, client)


class DownloadSession:
    def __init__(self, downloader: Downloader, client: httpx.AsyncClient) -> None:
        self._d = downloader
        self._client = client

    async def fetch(self, url: str) -> bytes:
        """The body at `url`, following allowed redirects, within the byte cap and deadline."""
        target = self._d.check(url)
        try:
            async with asyncio.timeout(self._d.timeout_s):
                return await self._follow(target)
        except TimeoutError:
            raise DownloadTimeoutError(
                f"The upload took longer than {self._d.timeout_s:g} s "
                "(RAIOX_DOWNLOAD_TIMEOUT_SECONDS)."
            ) from None
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout):
                raise DownloadFailedError("Could not connect to the upload server.") from None
            raise DownloadTimeoutError("The upload server stopped sending the file.") from None
        except httpx.RequestError as exc:
            raise DownloadFailedError(
                f"Could not reach the upload server ({type(exc).__name__})."
            ) from None

    async def _follow(self, target: httpx.URL) -> bytes:
        for _ in range(MAX_REDIRECTS + 1):
            request = self._request(target)
            response = await self._client.send(request, stream=True)
            try:
                if response.status_code in REDIRECT_STATUSES:
                    location = response.headers.get("location")
                    if not location:
                        raise DownloadFailedError(
                            "The upload server sent a redirect without target."
                        )
                    target = self._d.check(_joined(target, location))
                    continue
                if response.status_code != 200:
                    raise _refused(response.status_code)
                return await self._read(response)
            finally:
                await response.aclose()
        raise DownloadFailedError(f"The upload server redirected more than {MAX_REDIRECTS} times.")

    def _request(self, url: httpx.URL) -> httpx.Request:
        url, headers = with_credentials(url, self._d.jotform_api_key)
        return self._client.build_request("GET", url, headers=headers)

    async def _read(self, response: httpx.Response) -> bytes:
        limit = self._d.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise self._too_large()
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise self._too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self) -> DownloadTooLargeError:
        return DownloadTooLargeError(
            f"The uploaded file is larger than {self._d.max_bytes} bytes (RAIOX_MAX_UPLOAD_BYTES)."
        )


def _refused(status: int) -> DownloadFailedError:
    hint = " (private uploads need RAIOX_JOTFORM_API_KEY)" if status in (401, 403) else ""
    return DownloadFailedError(f"The upload server answered HTTP {status}{hint}.")


def _joined(base: httpx.URL, location: str) -> str:
    try:
        return str(base.join(location))
    except (httpx.InvalidURL, ValueError):
        raise DownloadFailedError("The upload server sent an invalid redirect.") from None
