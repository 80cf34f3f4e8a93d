"""Fetch and decode task images: Label Studio uploads, local files, http(s) URLs and local paths.

Every failure is an ImageError whose message says which image and why, so that one bad task is
reported and skipped while the rest of the batch is served.
"""
from __future__ import annotations

import io
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import cv2
import numpy as np
import requests
from PIL import Image, UnidentifiedImageError

from .label_studio import LabelStudioAuthError, LabelStudioClient

LABEL_STUDIO_PATHS = ("/data/", "/storage-data/", "/tasks/")
MAX_REDIRECTS = 5


class ImageError(ValueError):
    pass


class ImageLoader:
    def __init__(self, settings, label_studio: LabelStudioClient):
        self.settings = settings
        self.label_studio = label_studio
        self.session = requests.Session()

    def load(self, url: str) -> np.ndarray:
        """The image at `url` as RGB uint8 H x W x 3, upright as its EXIF orientation says."""
        if not isinstance(url, str) or not url.strip():
            raise ImageError(f"the task has no image URL (got {url!r})")
        return decode_image(self.read_bytes(url.strip()), url, self.settings)

    def read_bytes(self, url: str) -> bytes:
        parts = urlsplit(url)
        if parts.scheme in ("http", "https"):
            return self._download(url)
        if parts.scheme == "file":
            return self._read_file(Path(unquote(parts.path)), url)
        if parts.scheme == "" and url.startswith(LABEL_STUDIO_PATHS):
            local = self._local_files_path(url)
            if local is not None:
                return self._read_file(local, url)
            try:
                return self._download(self.label_studio.absolute(url))
            except LabelStudioAuthError as error:
                raise ImageError(str(error)) from None
        if parts.scheme == "":
            return self._read_file(Path(url), url)
        raise ImageError(f"{url}: unsupported URL scheme {parts.scheme!r} (use http(s), a Label Studio path or a file path)")

    def _local_files_path(self, url: str) -> Path | None:
        """/data/local-files/?d=dir/a.jpg read straight from LOCAL_FILES_ROOT when it is set (shared volume)."""
        parts = urlsplit(url)
        root = self.settings.local_files_root
        if root is None or not parts.path.startswith("/data/local-files"):
            return None
        relative = parse_qs(parts.query).get("d", [""])[0]
        path = (Path(root) / relative).resolve()
        if not path.is_relative_to(Path(root).resolve()):
            raise ImageError(f"{url}: the path leaves LOCAL_FILES_ROOT")
        return path

    def _read_file(self, path: Path, url: str) -> bytes:
        try:
            size = path.stat().st_size
            if size > self.settings.max_image_bytes:
                raise ImageError(f"{url}: file is {size} bytes, over MAX_IMAGE_BYTES={self.settings.max_image_bytes}")
            return path.read_bytes()
        except FileNotFoundError:
            raise ImageError(f"{url}: no such file") from None
        except IsADirectoryError:
            raise ImageError(f"{url}: is a directory, not an image") from None
        except PermissionError:
            raise ImageError(f"{url}: permission denied") from None

    def _download(self, url: str) -> bytes:
        for _ in range(MAX_REDIRECTS + 1):
            # Redirects are followed by hand so the Label Studio key is sent to Label Studio's own host only.
            headers = self.label_studio.auth_header() if self.label_studio.owns(url) else {}
            try:
                response = self._get(url, headers)
                if response.status_code == 401 and headers:
                    response.close()
                    response = self._get(url, self.label_studio.auth_header(force_refresh=True))
            except LabelStudioAuthError as error:
                raise ImageError(f"{url}: {error}") from None
            except requests.RequestException as error:
                raise ImageError(f"{url}: download failed: {error.__class__.__name__}: {error}") from None
            with response:
                if response.is_redirect:
                    target = requests.compat.urljoin(url, response.headers["location"])
                    if headers and urlsplit(target).path.startswith("/user/login"):
                        raise ImageError(f"{url}: Label Studio asked for a login: check LABEL_STUDIO_API_KEY")
                    url = target
                    continue
                if response.status_code != 200:
                    hint = " (check LABEL_STUDIO_API_KEY)" if response.status_code in (401, 403) and headers else ""
                    raise ImageError(f"{url}: HTTP {response.status_code} {response.reason}{hint}")
                return self._read_capped(response, url)
        raise ImageError(f"{url}: more than {MAX_REDIRECTS} redirects")

    def _get(self, url: str, headers: dict) -> requests.Response:
        return self.session.get(url, headers=headers, timeout=self.settings.fetch_timeout,
                                stream=True, allow_redirects=False)

    def _read_capped(self, response: requests.Response, url: str) -> bytes:
        limit = self.settings.max_image_bytes
        data = bytearray()
        try:
            for chunk in response.iter_content(1 << 16):
                data.extend(chunk)
                if len(data) > limit:
                    raise ImageError(f"{url}: larger than MAX_IMAGE_BYTES={limit}")
        except requests.RequestException as error:
            raise ImageError(f"{url}: download broke off: {error}") from None
        return bytes(data)


def decode_image(data: bytes, name: str, settings) -> np.ndarray:
    """Decode any common image (grey, RGBA, palette, 16-bit) to RGB uint8, refusing bombs and tiny images."""
    if not data:
        raise ImageError(f"{name}: the file is empty")
    try:
        # Pillow reads only the header here: the size is known before a single pixel is decoded.
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
            image_format = header.format
    except Image.DecompressionBombError:  # over Pillow's own limit, which is above ours
        raise _too_many_pixels(name, "the image", settings) from None
    except (UnidentifiedImageError, OSError) as error:
        raise ImageError(f"{name}: not an image this backend can read ({error.__class__.__name__}: {error})") from None
    if width * height > settings.max_image_pixels:
        raise _too_many_pixels(name, f"{width}x{height} pixels", settings)
    if min(width, height) < settings.min_image_side:
        raise ImageError(f"{name}: {width}x{height} pixels is too small (MIN_IMAGE_SIDE={settings.min_image_side})")
    # OpenCV applies the EXIF orientation, as browsers (and so Label Studio) do, and brings grey, alpha,
    # palette and 16-bit images to 8-bit BGR.
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if array is None:
        try:
            with Image.open(io.BytesIO(data)) as pil_image:
                array = np.asarray(_to_rgb(pil_image))[..., ::-1]
        except (OSError, ValueError) as error:
            raise ImageError(f"{name}: the {image_format} file is corrupt or truncated ({error})") from None
    return np.ascontiguousarray(array[..., ::-1])


def _to_rgb(image: Image.Image) -> Image.Image:
    """For formats OpenCV does not decode (GIF, ...): upright, 8-bit RGB."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 / max(array.max(), 1.0)
        return Image.fromarray((array * scale).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def _too_many_pixels(name: str, size: str, settings) -> ImageError:
    return ImageError(
        f"{name}: {size} is over MAX_IMAGE_PIXELS={settings.max_image_pixels} "
        "(a decompression bomb or an image too large to annotate)"
    )
