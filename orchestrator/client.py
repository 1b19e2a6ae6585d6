"""A small blocking HTTP client for the API, used by the CLI."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["ApiClient", "ApiClientError"]


class ApiClientError(Exception):
    """The API answered with an error, or could not be reached."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{reason} (HTTP {status})" if status else reason)
        self.status = status
        self.reason = reason


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
    ) -> Any:
        """Send one request; return the decoded JSON answer.

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
        if upload is not None:
            data = upload.open("rb")
            headers["Content-Type"] = "application/octet-stream"
            headers["Content-Length"] = str(upload.stat().st_size)
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            try:
                reason = json.loads(e.read()).get("error", e.reason)
            except (ValueError, AttributeError):
                reason = str(e.reason)
            raise ApiClientError(e.code, str(reason)) from None
        except (urllib.error.URLError, OSError) as e:
            raise ApiClientError(0, f"cannot reach {self.server}: {e}") from None
        finally:
            if upload is not None and data is not None:
                data.close()
