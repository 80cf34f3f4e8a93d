"""Fetch and decode task images: Label Studio media, http(s) URLs and local files, each within bounds.

- Label Studio paths (/data/upload/..., /data/local-files/?d=..., /storage-data/..., presign and resolve
  links) go through LabelStudioClient.request, the only requests that carry the API key; /data/local-files/
  is read straight from LOCAL_FILES_ROOT when that is set.
- http(s) URLs never carry the key. Their host is resolved once and every address checked: loopback,
  private, link-local, multicast and reserved addresses are refused unless ALLOWED_IMAGE_HOSTS allows them
  (Label Studio's own host and port always are). The connection goes to the address that was checked, so a
  name that resolves elsewhere a moment later changes nothing; every redirect is checked the same way.
- Local paths and file:// URLs are read only under LOCAL_FILES_ROOT (the command line, whose user names the
  files, uses ImageLoader(trusted_paths=True)); regular files only, never a device, pipe or directory.
- A download gets FETCH_TIMEOUT seconds in all, redirects included, and MAX_IMAGE_BYTES; an image over
  MAX_IMAGE_PIXELS is refused, one over MAX_WORK_PIXELS is decoded reduced (JPEG at 1/2, 1/4 or 1/8 of its
  size straight from the file), so that one image costs a worker a bounded amount of memory.

Every failure is an ImageError whose message says which image, why, and which setting would allow it, so
that one bad task is reported and skipped while the rest of the batch is served.
"""
from __future__ import annotations

import http.client
import io
import ipaddress
import math
import os
import re
import socket
import ssl
import stat
import threading
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import parse_qs, quote, unquote, urljoin, urlsplit, urlunsplit

import cv2
import numpy as np
import urllib3
from PIL import Image, UnidentifiedImageError

from .label_studio import DEFAULT_PORTS, LabelStudioClient, LabelStudioError, is_media_path, origin, url_defect

MAX_REDIRECTS = 5
# Name lookups run on this many threads per loader, so that a download's deadline covers them too: a lookup
# that outlives it keeps its thread until the system resolver gives up (its own timeouts, seconds), and
# lookups beyond that many wait their turn within their own deadlines.
RESOLVER_THREADS = 4
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
CHUNK = 1 << 16
LOCAL_FILES_PATH = re.compile(r"/data/local-files/?\?")
HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*")
URL_SAFE = "/%:@!$&'()*+,;=-._~?"
WEB_HEADERS = {"User-Agent": "autoannotator", "Accept": "image/*", "Accept-Encoding": "identity"}
# Formats browsers show (and TIFF): other decoders OpenCV has (JPEG 2000, HDR, PFM, ...) are not exposed.
SUPPORTED_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "TIFF", "WEBP")
EXIF_ORIENTATION = 0x0112
TURNING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90 degrees
REDUCED_DECODE = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                  8: cv2.IMREAD_REDUCED_COLOR_8}


class ImageError(ValueError):
    pass


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded image. `pixels`: RGB uint8, H x W x 3, upright as its EXIF orientation says, reduced when the
    image has more than MAX_WORK_PIXELS. `width`, `height`: the upright size of the image itself, the one
    Label Studio shows and puts coordinates in."""

    pixels: np.ndarray
    width: int
    height: int

    @property
    def scale(self) -> float:
        """Width of `pixels` per width of the image: 1.0 when not reduced."""
        return self.pixels.shape[1] / self.width


class ImageLoader:
    """Reads task images. trusted_paths=True reads local paths anywhere (the command line, whose user names
    the files); the service leaves it False: local files only under LOCAL_FILES_ROOT."""

    def __init__(self, settings, label_studio: LabelStudioClient, trusted_paths: bool = False):
        self.settings = settings
        self.label_studio = label_studio
        self.trusted_paths = trusted_paths
        self.hosts = HostPolicy(settings.allowed_image_hosts, label_studio.origin)
        # One decode at a time per process: a large image takes hundreds of MB while it is decoded (see
        # decode_image), and a worker's threads must not multiply that.
        self._decoding = threading.Lock()

    def load(self, source: str) -> LoadedImage:
        """The image at `source`: a Label Studio path, an http(s) or file URL, or a local path."""
        if not isinstance(source, str) or not source.strip():
            raise ImageError(f"the task has no image URL (got {_shown(repr(source))})")
        source = source.strip()
        deadline = _Deadline(self.settings.fetch_timeout)
        try:
            data = self._read(source, deadline)
        finally:
            deadline.close()
        with self._decoding:
            return decode_image(data, _shown(source), self.settings)

    def _read(self, source: str, deadline: _Deadline) -> bytes:
        if is_media_path(source):
            if self.settings.local_files_root is not None and LOCAL_FILES_PATH.match(source):
                relative = parse_qs(urlsplit(source).query).get("d", [""])[0]
                if not relative:
                    raise ImageError(f"{_shown(source)}: names no file (d=...)")
                return self._read_local(Path(relative), source, confined=True)
            return self._from_label_studio(source, deadline)
        try:
            scheme = urlsplit(source).scheme.lower()
        except ValueError as error:
            raise ImageError(f"{_shown(source)}: not a valid URL ({error})") from None
        if scheme in DEFAULT_PORTS:
            media = self._label_studio_media(source)
            return self._from_label_studio(media, deadline) if media else self._from_web(source, deadline)
        if scheme == "file":
            return self._read_local(_file_url_path(source), source, confined=not self.trusted_paths)
        if scheme == "":
            if any(unicodedata.category(char) == "Cc" for char in source):
                raise ImageError(f"{_shown(source)}: refused: the path has a control character")
            return self._read_local(Path(source), source, confined=not self.trusted_paths)
        raise ImageError(f"{_shown(source)}: unsupported URL scheme {scheme!r} "
                         "(use http(s), a Label Studio path or a file path)")

    def _label_studio_media(self, url: str) -> str | None:
        """The media path of a full URL on Label Studio's own address (Label Studio started with
        LABEL_STUDIO_HOST writes its uploads so), or None. Only the path is used: the request is built
        from LABEL_STUDIO_URL, so the key goes to no host the task names."""
        if url_defect(url) or self.label_studio.origin is None or origin(url) != self.label_studio.origin:
            return None
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return path if is_media_path(path) else None

    def _from_label_studio(self, path: str, deadline: _Deadline) -> bytes:
        try:
            response = self.label_studio.request("GET", path, stream=True, timeout=deadline.remaining(path),
                                                 headers={"Accept-Encoding": "identity"})
        except LabelStudioError as error:
            if deadline.expired:
                raise deadline.exceeded(path) from None
            raise ImageError(f"{_shown(path)}: {error}") from None
        with response:
            if response.is_redirect:  # to another origin (presigned cloud storage): followed without the key
                target = urljoin(response.url, response.headers["location"])
            elif response.status_code != 200:
                hint = " (check LABEL_STUDIO_API_KEY)" if response.status_code in (401, 403) else ""
                raise ImageError(f"{_shown(path)}: Label Studio answered HTTP {response.status_code} "
                                 f"{response.reason}{hint}")
            else:
                deadline.watch(response.raw.shutdown, path)
                return _read_body(response.raw, path, self.settings.max_image_bytes, deadline)
        return self._from_web(target, deadline)

    def _from_web(self, url: str, deadline: _Deadline) -> bytes:
        for _ in range(MAX_REDIRECTS + 1):
            target = _web_target(url)
            connection = self._connect(target, url, deadline)
            try:
                connection.request("GET", target.path, headers=WEB_HEADERS)
                response = connection.getresponse()
                if response.status in REDIRECT_STATUSES and response.getheader("Location"):
                    url = urljoin(url, response.getheader("Location"))
                    continue
                if response.status != 200:
                    hint = self._key_hint(target, response.status)
                    raise ImageError(f"{_shown(url)}: HTTP {response.status} {response.reason}{hint}")
                return _read_body(response, url, self.settings.max_image_bytes, deadline)
            except (OSError, http.client.HTTPException) as error:
                if deadline.expired:
                    raise deadline.exceeded(url) from None
                raise ImageError(f"{_shown(url)}: download failed: {error.__class__.__name__}: {error}") from None
            finally:
                connection.close()
        raise ImageError(f"{_shown(url)}: more than {MAX_REDIRECTS} redirects")

    def _connect(self, target: _WebTarget, url: str, deadline: _Deadline) -> _PinnedHTTPConnection:
        """A connection to one of the checked addresses of the URL's host, tried in the resolver's order."""
        failures = []
        kind = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
        for address in self.hosts.addresses(target.host, target.port, url, deadline):
            connection = kind(target.host, target.port, address, deadline, url)
            try:
                connection.connect()
                return connection
            except (OSError, http.client.HTTPException) as error:
                connection.close()
                if deadline.expired:
                    raise deadline.exceeded(url) from None
                failures.append(f"{address}: {error.__class__.__name__}: {error}")
            except ImageError:
                connection.close()
                raise
        raise ImageError(f"{_shown(url)}: download failed: cannot connect to {target.host} ({'; '.join(failures)})")

    def _key_hint(self, target: _WebTarget, status: int) -> str:
        label_studio = self.label_studio.origin
        if status in (401, 403) and label_studio and (target.host, target.port) == label_studio[1:]:
            return (" (a full URL never carries LABEL_STUDIO_API_KEY: give Label Studio's path, /data/upload/..., "
                    "which is fetched from LABEL_STUDIO_URL with the key)")
        return ""

    def _read_local(self, path: Path, source: str, confined: bool) -> bytes:
        shown = _shown(source)
        root = None
        if confined:
            if self.settings.local_files_root is None:
                raise ImageError(f"{shown}: local files are read only under LOCAL_FILES_ROOT, which is not set: "
                                 "set it to the folder that holds the images")
            root = Path(os.path.realpath(self.settings.local_files_root))
            path = root / path  # a relative path is under the root; an absolute one must be
        path = Path(os.path.realpath(path))  # every symbolic link resolved, then checked
        if root is not None and not path.is_relative_to(root):
            raise ImageError(f"{shown}: outside LOCAL_FILES_ROOT: local files are read only under it")
        return _read_regular_file(path, shown, self.settings.max_image_bytes, root)


class HostPolicy:
    """Which hosts images may be downloaded from: any whose addresses are all public; others only when
    ALLOWED_IMAGE_HOSTS names them (host names, addresses, networks) or they are Label Studio's own host and
    port (`label_studio`: the origin of LABEL_STUDIO_URL)."""

    def __init__(self, allowed: Iterable[str], label_studio: tuple[str, str, int | None] | None):
        self.names: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in allowed:
            entry = entry.strip().lower().rstrip(".")
            try:
                self.networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                if not HOST_NAME.fullmatch(entry):
                    raise ValueError(f"ALLOWED_IMAGE_HOSTS: {entry!r} is not a host name, an IP address or a "
                                     "network (10.0.0.0/8)") from None
                self.names.add(entry)
        self.label_studio = label_studio[1:] if label_studio else None
        self._resolver = ThreadPoolExecutor(RESOLVER_THREADS, thread_name_prefix="resolve")

    def addresses(self, host: str, port: int, url: str, deadline: "_Deadline") -> list[str]:
        """The addresses of `host` to connect to, every one checked: ImageError naming the first refused."""
        lookup = self._resolver.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
        try:
            found = lookup.result(timeout=deadline.remaining(url))
        except FutureTimeout:
            lookup.cancel()
            raise ImageError(f"{_shown(url)}: not downloaded within FETCH_TIMEOUT={deadline.seconds:g} s "
                             f"(looking up {host} took too long)") from None
        except (OSError, UnicodeError) as error:
            raise ImageError(f"{_shown(url)}: download failed: cannot resolve {host}: {error}") from None
        addresses = list(dict.fromkeys(info[4][0] for info in found))
        if host.rstrip(".") in self.names or (host, port) == self.label_studio:
            return addresses
        for address in addresses:
            refusal = self.refusal(ipaddress.ip_address(address))
            if refusal:
                raise ImageError(f"{_shown(url)}: {host} is at {address}, {refusal}: refused "
                                 "(ALLOWED_IMAGE_HOSTS can allow a host, an address or a network)")
        return addresses

    def refusal(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
        """Why images are not fetched from `address`, or None."""
        if any(address in network for network in self.networks):
            return None
        if address.version == 6 and address.ipv4_mapped:  # ::ffff:127.0.0.1 is 127.0.0.1
            return self.refusal(address.ipv4_mapped)
        for kind in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved"):
            if getattr(address, f"is_{kind}"):
                return f"a {kind.replace('_', '-')} address"
        if not address.is_global:
            return "not a public address"
        if address.version == 6:  # 6to4 and Teredo addresses carry an IPv4 address that relays reach
            embedded = address.sixtofour or (address.teredo[1] if address.teredo else None)
            if embedded is not None and self.refusal(embedded):
                return f"an address that leads to {embedded}, {self.refusal(embedded)}"
        return None


class _Deadline:
    """FETCH_TIMEOUT for a whole download, redirects included. When it passes, a watchdog shuts the connection
    down: that ends even a read that a server feeds one byte at a time, which a socket timeout (per read)
    would let run for as long as the server likes."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.cut = False
        self._shutdown: Callable[[], None] | None = None
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    @property
    def expired(self) -> bool:
        """Whether the time is up (the watchdog cut, or a socket timeout set to the time left ran out)."""
        return self.cut or time.monotonic() >= self.end

    def remaining(self, source: str) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise self.exceeded(source)
        return left

    def exceeded(self, source: str) -> ImageError:
        return ImageError(f"{_shown(source)}: not downloaded within FETCH_TIMEOUT={self.seconds:g} s")

    def watch(self, shutdown: Callable[[], None], source: str) -> None:
        """From now on `shutdown` (of the current connection) is what ends the download when time is up."""
        with self._lock:
            if self.cut:
                raise self.exceeded(source)
            self._shutdown = shutdown
            if self._timer is None:
                self._timer = threading.Timer(self.remaining(source), self._cut)
                self._timer.daemon = True
                self._timer.start()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _cut(self) -> None:
        with self._lock:
            self.cut = True
            shutdown = self._shutdown
        try:
            shutdown()
        except (OSError, ValueError, RuntimeError):  # already closed
            pass


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to `address`, one that HostPolicy checked, whatever the host name resolves to by now; the request
    names the host as the URL does (Host header)."""

    def __init__(self, host: str, port: int, address: str, deadline: _Deadline, url: str):
        super().__init__(host, port, timeout=deadline.remaining(url))
        self.address, self.deadline, self.url = address, deadline, url
        self.watched: socket.socket | None = None

    def connect(self):
        self.sock = socket.create_connection((self.address, self.port), self.timeout)
        # A duplicate of the socket: shutting it down from the deadline's thread ends the connection, TLS
        # handshake included, while this thread may be blocked in a read.
        self.watched = self.sock.dup()
        self.deadline.watch(self._shutdown, self.url)

    def _shutdown(self):
        if self.watched is not None:
            self.watched.shutdown(socket.SHUT_RDWR)

    def close(self):
        super().close()
        if self.watched is not None:
            self.watched.close()
            self.watched = None


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    default_port = 443

    def connect(self):
        super().connect()
        # Certificate and SNI are for the URL's host name, not for the address connected to.
        self.sock = ssl.create_default_context().wrap_socket(self.sock, server_hostname=self.host)


@dataclass(frozen=True)
class _WebTarget:
    scheme: str
    host: str  # ASCII (IDNA), lower case, an IPv6 address without brackets
    port: int
    path: str  # path and query as sent in the request line


def _web_target(url: str) -> _WebTarget:
    shown = _shown(url)
    defect = url_defect(url)
    if defect:
        raise ImageError(f"{shown}: refused: the URL has {defect}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise ImageError(f"{shown}: not a valid URL ({error})") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ImageError(f"{shown}: only http(s) URLs are downloaded (and redirects to them followed)")
    host = parts.hostname
    if not host:
        raise ImageError(f"{shown}: the URL names no host")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ImageError(f"{shown}: not a valid host name") from None
    path = quote(parts.path or "/", safe=URL_SAFE) + (f"?{quote(parts.query, safe=URL_SAFE)}" if parts.query else "")
    return _WebTarget(scheme, host, port or DEFAULT_PORTS[scheme], path)


def _file_url_path(url: str) -> Path:
    defect = url_defect(url)
    if defect:
        raise ImageError(f"{_shown(url)}: refused: the URL has {defect}")
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ImageError(f"{_shown(url)}: a file URL of another host ({parts.netloc}) is not read")
    return Path(unquote(parts.path))


def _read_body(response, source: str, limit: int, deadline: _Deadline) -> bytes:
    """The body of an http.client or urllib3 response, at most `limit` bytes, within the deadline."""
    shown = _shown(source)
    encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise ImageError(f"{shown}: the server sent the image {encoding}-encoded, though asked for it as it is")
    declared = response.headers.get("Content-Length")
    declared = int(declared) if declared and declared.strip().isdigit() else None
    if declared is not None and declared > limit:
        raise ImageError(f"{shown}: {declared} bytes, over MAX_IMAGE_BYTES={limit}")
    data = bytearray()
    try:
        while chunk := response.read1(CHUNK):
            data += chunk
            if len(data) > limit:
                raise ImageError(f"{shown}: larger than MAX_IMAGE_BYTES={limit}")
            # Linux keeps delivering what a server sends after the watchdog's shutdown (SHUT_RD discards
            # nothing), so a server that drips bytes is stopped here, at the first byte past the deadline.
            if deadline.expired:
                raise deadline.exceeded(source)
    except (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError) as error:
        if deadline.expired:
            raise deadline.exceeded(source) from None
        raise ImageError(f"{shown}: the download broke off ({error.__class__.__name__})") from None
    if deadline.cut:
        raise deadline.exceeded(source)
    if declared is not None and len(data) < declared:
        raise ImageError(f"{shown}: the download broke off after {len(data)} of {declared} bytes")
    return bytes(data)


def _read_regular_file(path: Path, shown: str, limit: int, root: Path | None) -> bytes:
    """At most `limit` bytes of a regular file (`root`: the folder the opened file must be in)."""
    try:
        # stat before opening, so that a device is never opened (opening some has effects); fstat after, in
        # case the path changed in between. O_NONBLOCK: opening a FIFO would otherwise wait for a writer.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise _not_regular(shown)
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ImageError(f"{shown}: no such file") from None
    except PermissionError:
        raise ImageError(f"{shown}: permission denied") from None
    except OSError as error:
        raise ImageError(f"{shown}: cannot be opened ({error.strerror})") from None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise _not_regular(shown)
        if root is not None and not _opened_under(descriptor, root):
            raise ImageError(f"{shown}: outside LOCAL_FILES_ROOT: local files are read only under it")
        if info.st_size == 0:  # an empty file, or one of /proc's, which all say 0 bytes
            raise ImageError(f"{shown}: the file is empty (0 bytes)")
        if info.st_size > limit:
            raise ImageError(f"{shown}: the file is {info.st_size} bytes, over MAX_IMAGE_BYTES={limit}")
        data = bytearray()
        while chunk := os.read(descriptor, min(CHUNK, limit + 1 - len(data))):
            data += chunk
            if len(data) > limit:
                raise ImageError(f"{shown}: the file is over MAX_IMAGE_BYTES={limit}")
        return bytes(data)
    finally:
        os.close(descriptor)


def _opened_under(descriptor: int, root: Path) -> bool:
    """Whether the file actually opened is under `root`: a directory on the way may have been swapped for a
    symbolic link after the path was checked."""
    try:
        opened = Path(os.readlink(f"/proc/self/fd/{descriptor}"))
    except OSError:  # no /proc: the check of the resolved path is all there is
        return True
    return opened.is_relative_to(root)


def _not_regular(shown: str) -> ImageError:
    return ImageError(f"{shown}: not a regular file (a directory, device, pipe or socket)")


def _shown(source: str) -> str:
    """`source` as messages show it: printable, at most 200 characters, and without the query of a full URL
    (presigned cloud storage URLs carry their signature there)."""
    try:
        parts = urlsplit(source)
        if parts.scheme and parts.netloc and parts.query:
            source = urlunsplit(parts._replace(query="...", fragment=""))
    except ValueError:
        pass
    source = "".join(char if char.isprintable() else ascii(char)[1:-1] for char in source)
    return source if len(source) <= 200 else source[:200] + "..."


def decode_image(data: bytes, name: str, settings) -> LoadedImage:
    """Decode a JPEG, PNG, GIF, BMP, TIFF or WebP image (grey, alpha, palette, 16-bit) to upright RGB uint8,
    refusing bombs and tiny images, reduced to at most MAX_WORK_PIXELS pixels."""
    if not data:
        raise ImageError(f"{name}: the file is empty")
    try:
        # Pillow reads only the header here: the size is known before a single pixel is decoded.
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
            image_format = header.format
            turned = header.getexif().get(EXIF_ORIENTATION) in TURNING_ORIENTATIONS
    except Image.DecompressionBombError:  # over Pillow's own limit, which is above ours
        raise _too_many_pixels(name, "the image", settings) from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ImageError(f"{name}: not an image this backend can read ({error.__class__.__name__}: {error})") from None
    if image_format not in SUPPORTED_FORMATS:
        raise ImageError(f"{name}: {image_format} images are not read (only {', '.join(SUPPORTED_FORMATS)})")
    if width * height > settings.max_image_pixels:
        raise _too_many_pixels(name, f"{width}x{height} pixels", settings)
    if min(width, height) < settings.min_image_side:
        raise ImageError(f"{name}: {width}x{height} pixels is too small (MIN_IMAGE_SIDE={settings.min_image_side})")
    reduction = _reduction(width, height, settings.max_work_pixels, image_format)
    # OpenCV applies the EXIF orientation, as browsers (and so Label Studio) do, and brings grey, alpha,
    # palette and 16-bit images to 8-bit BGR.
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), REDUCED_DECODE[reduction])
    if pixels is None:
        raise ImageError(f"{name}: the {image_format} file is corrupt, truncated, or beyond what its decoder accepts")
    # The upright size: as the EXIF orientation says, checked against what the decoder did (which rounds a
    # reduced side either way); failing both, the decoder's own idea of the size.
    rows, cols = pixels.shape[:2]
    reduced = lambda side: (side // reduction, -(-side // reduction))  # noqa: E731
    upright = (height, width) if turned else (width, height)
    width, height = next(((w, h) for w, h in (upright, upright[::-1]) if rows in reduced(h) and cols in reduced(w)),
                         (cols * reduction, rows * reduction))
    pixels = _fit(pixels, settings.max_work_pixels)
    return LoadedImage(cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB, dst=pixels), width, height)


def _reduction(width: int, height: int, budget: int, image_format: str) -> int:
    """The largest reduction at decoding that still leaves at least `budget` pixels (so no detail is lost
    that resizing down to `budget` would keep), for the least memory. libjpeg decodes JPEG straight at 1/2,
    1/4 or 1/8 of its size; OpenCV halves other formats as it decodes them (a 2x2 mean), which costs less
    memory than a full-size result (its decoders keep a second full-size copy for that)."""
    factors = (1, 2, 4, 8) if image_format in ("JPEG", "MPO") else (1, 2)
    return max(factor for factor in factors if factor == 1 or -(-width // factor) * -(-height // factor) >= budget)


def _fit(pixels: np.ndarray, budget: int) -> np.ndarray:
    rows, cols = pixels.shape[:2]
    if rows * cols <= budget:
        return pixels
    scale = math.sqrt(budget / (rows * cols))
    size = (max(1, int(cols * scale)), max(1, int(rows * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def _too_many_pixels(name: str, size: str, settings) -> ImageError:
    return ImageError(
        f"{name}: {size} is over MAX_IMAGE_PIXELS={settings.max_image_pixels} "
        "(a decompression bomb or an image too large to annotate)"
    )
