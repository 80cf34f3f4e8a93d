"""Talking to Label Studio: the one place the API key is used.

The key goes only with a request this client builds itself, from LABEL_STUDIO_URL and a path of Label
Studio's own (/data/upload/..., /api/...): never with a URL from a task or a caller, whatever host that URL
seems to name, and never across a redirect to another origin.

Label Studio 1.23 disables legacy tokens by default; a personal access token (PAT) is a JWT refresh
token that must be exchanged at /api/token/refresh for a short-lived access token, sent as Bearer.
"""
from __future__ import annotations

import base64
import json
import re
import threading
import time
import unicodedata
from urllib.parse import unquote, urljoin, urlsplit

import requests
from urllib3.util import parse_url

# Paths of Label Studio's media: uploads, local files, cloud storage (proxied, or presigned and redirected).
MEDIA_PATH = re.compile(
    r"/(?:data/upload/|data/local-files/?\?|storage-data/|(?:tasks|projects)/\d+/(?:presign|resolve)/?\?)"
)
API_PREFIX = "/api/"
MAX_REDIRECTS = 5
DEFAULT_PORTS = {"http": 80, "https": 443}


class LabelStudioError(RuntimeError):
    pass


class LabelStudioAuthError(LabelStudioError):
    pass


def url_defect(url: str) -> str | None:
    """What makes `url` unsafe to send anywhere, or None.

    Backslashes, whitespace and control characters are read differently by different URL parsers (the
    parser that checks a host and the one that connects could disagree about which host it is); user
    names in a URL are never needed for images and hide the real host from a reader.
    """
    for char in url:
        if char == "\\":
            return "a backslash"
        if char.isspace():
            return "whitespace"
        if unicodedata.category(char) in ("Cc", "Cf"):
            return "a control character"
    if "@" in urlsplit(url).netloc:
        return "a user name (user@host)"
    return None


def is_media_path(path: str) -> bool:
    """True for the paths of Label Studio's media (/data/upload/..., /data/local-files/?d=..., ...)."""
    return MEDIA_PATH.match(path) is not None


def path_defect(path: str) -> str | None:
    """Why `path` is not a path of Label Studio's own that may carry the key, or None."""
    defect = url_defect(path)
    if defect:
        return f"it has {defect}"
    if not path.startswith("/") or path.startswith("//"):
        return "it is not a path (/...) on Label Studio"
    if any(segment in (".", "..") for segment in unquote(path.partition("?")[0]).split("/")):
        return "it has a . or .. segment"
    if not (is_media_path(path) or path.startswith(API_PREFIX)):
        return ("it is none of Label Studio's media or API paths "
                "(/data/upload/, /data/local-files/, /storage-data/, /api/, ...)")
    return None


def origin(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) as the HTTP client (urllib3, under requests) parses the URL it connects to;
    None for a URL it cannot parse."""
    try:
        parts = parse_url(url)
    except ValueError:
        return None
    scheme = (parts.scheme or "").lower()
    return scheme, (parts.host or "").lower().strip("[]"), parts.port or DEFAULT_PORTS.get(scheme)


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
    """Knows Label Studio's address and key; `request` is the only way to use the key."""

    REFRESH_MARGIN = 30  # seconds before expiry at which an access token is renewed

    def __init__(self, url: str, api_key: str, session: requests.Session | None = None, timeout: float = 30):
        self.url = url.strip().rstrip("/")
        if self.url:
            _check_label_studio_url(self.url)
        self.origin = origin(self.url) if self.url else None
        self.api_key = api_key.strip()
        self.session = session or requests.Session()
        self.timeout = timeout
        self._access: tuple[str, float] | None = None  # (token, expires at)
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        return bool(self.url)

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        """`method` on Label Studio's `path` (/api/..., /data/upload/..., a query string allowed), with the key.

        keyword arguments go to requests (params, json, headers, stream, timeout: LabelStudioClient's timeout
        by default). Redirects of a GET or HEAD within Label Studio's origin are followed, with the key; a
        redirect anywhere else (a presigned cloud storage URL) is returned as it is, for the caller to follow
        without the key. An access token that Label Studio no longer accepts (HTTP 401) is renewed once.
        Any HTTP status is returned; LabelStudioError when the path is not Label Studio's, Label Studio
        cannot be reached or redirects too often, LabelStudioAuthError when it refuses the key. Error
        messages do not repeat the method and path: callers say what they were doing.
        """
        defect = path_defect(path) if isinstance(path, str) else "it is not a string"
        if defect:
            raise LabelStudioError(f"not sent to Label Studio: {defect}")
        if not self.url:
            raise LabelStudioError("a Label Studio path, but LABEL_STUDIO_URL is not set: "
                                   "set it to Label Studio's address")
        url = self.url + path
        if origin(url) != self.origin:  # cannot happen for a checked path; the key depends on it, so check
            raise LabelStudioError("not sent to Label Studio: the URL would leave LABEL_STUDIO_URL's host")
        kwargs.setdefault("timeout", self.timeout)
        headers = kwargs.pop("headers", None) or {}
        for _ in range(MAX_REDIRECTS + 1):
            response = self._send(method, url, headers, kwargs)
            if not response.is_redirect or method.upper() not in ("GET", "HEAD"):
                return response
            target = urljoin(url, response.headers["location"])
            if url_defect(target) or origin(target) != self.origin:
                return response
            response.close()
            if "/user/login" in urlsplit(target).path:
                raise LabelStudioAuthError("Label Studio asked for a login: check LABEL_STUDIO_API_KEY")
            url = target
        raise LabelStudioError(f"Label Studio redirected more than {MAX_REDIRECTS} times")

    def _send(self, method: str, url: str, headers: dict, kwargs: dict) -> requests.Response:
        try:
            for refresh in (False, True):
                response = self.session.request(method, url, headers={**headers, **self._auth_header(refresh)},
                                                allow_redirects=False, **kwargs)
                if response.status_code != 401 or refresh or _jwt_claims(self.api_key) is None:
                    return response
                response.close()  # the access token expired or was revoked: renew it once
        except requests.RequestException as error:
            raise LabelStudioError(f"cannot reach Label Studio at {self.url}: {error}") from None

    def _auth_header(self, force_refresh: bool = False) -> dict:
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
                response = self.session.post(self.url + "/api/token/refresh", json={"refresh": self.api_key},
                                             timeout=self.timeout, allow_redirects=False)
            except requests.RequestException as error:
                raise LabelStudioAuthError(f"cannot reach Label Studio at {self.url}: {error}") from None
            access = _json_or_none(response)
            if response.status_code != 200 or not isinstance(access, dict) or "access" not in access:
                raise LabelStudioAuthError(
                    f"Label Studio refused the personal access token in LABEL_STUDIO_API_KEY "
                    f"(POST /api/token/refresh answered HTTP {response.status_code}): create a new one in "
                    "Account & Settings > Personal Access Token"
                )
            expires = (_jwt_claims(access["access"]) or {}).get("exp", time.time() + 60)
            self._access = (access["access"], float(expires))
            return access["access"]


def _json_or_none(response: requests.Response):
    try:
        return response.json()
    except ValueError:
        return None


def _check_label_studio_url(url: str) -> None:
    # The URL itself is not repeated: a user name and password in it would end up in the log.
    defect = url_defect(url)
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number in range)
    except ValueError:
        defect = defect or "a port that is not a number"
    if defect or parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.query or parts.fragment:
        raise LabelStudioError(
            "LABEL_STUDIO_URL must be http(s)://host[:port][/path], with no user name or password, query, "
            f"whitespace or backslash{f' (it has {defect})' if defect else ''}"
        )
