"""A small blocking HTTP client for the API, used by the CLI."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["UPLOAD_CHUNK", "ApiClient", "ApiClientError"]

UPLOAD_CHUNK = 1 << 20  # bytes read from an upload at a time, at most


class ApiClientError(Exception):
    """The API answered with an error, or could not be reached (``status`` 0).

    ``body`` is the API's decoded JSON error answer, when there was one.
    """

    def __init__(self, status: int, reason: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{reason} (HTTP {status})" if status else reason)
        self.status = status
        self.reason = reason
        self.body = body or {}


class _Reader:
    """A file read in bounded chunks, counting what was sent (the upload streams)."""

    def __init__(self, f: BinaryIO, on_read: Callable[[int], None] | None) -> None:
        self._f = f
        self._on_read = on_read

    def read(self, n: int = -1) -> bytes:
        chunk = self._f.read(n if 0 < n <= UPLOAD_CHUNK else UPLOAD_CHUNK)
        if chunk and self._on_read is not None:
            self._on_read(len(chunk))
        return chunk


class ApiClient:
    """Calls ``server`` with ``Authorization: Bearer token``.

    Args:
        server: the API's base URL, e.g. ``http://127.0.0.1:8080``.
        token: a bearer token.
        timeout: seconds per request.
    """

    def __init__(self, server: str, token: str | None, timeout: float = 60.0) -> None:
        if urllib.parse.urlsplit(server).scheme not in ("http", "https"):
            raise ApiClientError(0, f"--server {server!r}: expected an http(s):// URL")
        self.server = server.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: list[tuple[str, str]] | None = None,
        upload: Path | None = None,
        on_upload: Callable[[int], None] | None = None,
        raw: bytes | None = None,
    ) -> Any:
        """Send one request; return the decoded JSON answer.

        ``upload`` is sent as the body straight from the file, ``UPLOAD_CHUNK`` bytes at a
        time; ``on_upload`` is called with the size of each chunk sent. ``raw`` is a JSON
        document sent as it is (an SBOM).

        Raises:
            ApiClientError: a 4xx/5xx answer (with the API's reason) or no connection.
        """
        url = self.server + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data: Any = None
        f: BinaryIO | None = None
        if upload is not None:
            f = upload.open("rb")
            data = _Reader(f, on_upload)
            headers["Content-Type"] = "application/octet-stream"
            headers["Content-Length"] = str(upload.stat().st_size)
        elif raw is not None:
            data = raw
            headers["Content-Type"] = "application/json"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            raise self._error(e) from None
        except (urllib.error.URLError, OSError) as e:
            raise ApiClientError(0, f"cannot reach {self.server}: {e}") from None
        finally:
            if f is not None:
                f.close()

    def _error(self, e: urllib.error.HTTPError) -> ApiClientError:
        try:
            answer = json.loads(e.read())
        except (ValueError, OSError):
            answer = None
        if not isinstance(answer, dict):
            answer = {}
        reason = str(answer.get("error", e.reason))
        if e.code == 404 and reason in ("Not Found", str(e.reason)):
            # The route itself is unknown (the API names what is missing otherwise): most
            # likely --server carries a path, or points at something else.
            hint = (
                f"{self.server} has no fleetpush API at {urllib.parse.urlsplit(e.url).path}: "
                "--server (FLEETPUSH_SERVER) must be the orchestrator's base URL, like "
                "http://127.0.0.1:8080, without a path"
            )
            path = urllib.parse.urlsplit(self.server).path
            if path:
                hint += f" (drop {path!r})"
            return ApiClientError(404, hint, answer)
        if e.code == 401:
            if self.token:
                reason = f"{reason}: check --token (FLEETPUSH_TOKEN)"
            else:
                reason = f"{reason}: pass --token or set FLEETPUSH_TOKEN"
        return ApiClientError(e.code, reason, answer)
