"""Talking to Label Studio: which URLs are its own, and the Authorization header for them.

Label Studio 1.23 disables legacy tokens by default; a personal access token (PAT) is a JWT refresh
token that must be exchanged at /api/token/refresh for a short-lived access token, sent as Bearer.
"""
from __future__ import annotations

import base64
import json
import threading
import time
from urllib.parse import urljoin, urlsplit

import requests


class LabelStudioAuthError(RuntimeError):
    pass


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def _jwt_claims(token: str) -> dict | None:
    """The payload of a JWT, or None when the token is not one (a legacy token is 40 hex characters)."""
    pieces = token.split(".")
    if len(pieces) != 3:
        return None
    try:
        payload = pieces[1] + "=" * (-len(pieces[1]) % 4)
        return json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, json.JSONDecodeError):
        return None


class LabelStudioClient:
    """Knows Label Studio's address and key; hands out the auth header only for Label Studio's own URLs."""

    REFRESH_MARGIN = 30  # seconds before expiry at which an access token is renewed

    def __init__(self, url: str, api_key: str, session: requests.Session | None = None, timeout: float = 30):
        self.url = url.rstrip("/")
        self.api_key = api_key.strip()
        self.session = session or requests.Session()
        self.timeout = timeout
        self._access: tuple[str, float] | None = None  # (token, expires at)
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return bool(self.url)

    def absolute(self, url: str) -> str:
        """A Label Studio path such as /data/upload/1/a.jpg as a full URL."""
        if not self.url:
            raise LabelStudioAuthError(
                f"{url!r} is a Label Studio path, but LABEL_STUDIO_URL is not set: set it to Label Studio's address"
            )
        return urljoin(self.url + "/", url.lstrip("/"))

    def owns(self, url: str) -> bool:
        """True only for URLs on Label Studio's own scheme, host and port: the key goes nowhere else."""
        return bool(self.url) and _origin(url) == _origin(self.url)

    def auth_header(self, force_refresh: bool = False) -> dict:
        if not self.api_key:
            return {}
        if _jwt_claims(self.api_key) is None:
            return {"Authorization": f"Token {self.api_key}"}
        return {"Authorization": f"Bearer {self._access_token(force_refresh)}"}

    def _access_token(self, force_refresh: bool) -> str:
        with self._lock:
            if self._access and not force_refresh and self._access[1] - self.REFRESH_MARGIN > time.time():
                return self._access[0]
            try:
                response = self.session.post(
                    self.absolute("/api/token/refresh"), json={"refresh": self.api_key}, timeout=self.timeout
                )
            except requests.RequestException as error:
                raise LabelStudioAuthError(f"cannot reach Label Studio at {self.url}: {error}") from error
            if response.status_code != 200 or "access" not in (response.json() or {}):
                raise LabelStudioAuthError(
                    f"Label Studio refused the personal access token in LABEL_STUDIO_API_KEY "
                    f"(POST /api/token/refresh answered HTTP {response.status_code}): create a new one in "
                    "Account & Settings > Personal Access Token"
                )
            access = response.json()["access"]
            expires = (_jwt_claims(access) or {}).get("exp", time.time() + 60)
            self._access = (access, float(expires))
            return access
