"""Fetching and decoding task images: every source, every bad input, and where the API key may go.

The attacks (token leaks, local files, SSRF, slow and large downloads, memory) are in
test_image_sources_security.py; here the loader is set up as the command line's (local paths anywhere) with
the loopback servers allowed.
"""
import io

import cv2
import numpy as np
import pytest
from PIL import Image

from backend.config import Settings
from backend.service.images import ImageError, ImageLoader, LoadedImage
from backend.service.label_studio import LabelStudioClient
from tests.conftest import make_jwt

LEGACY_KEY = "0123456789abcdef0123456789abcdef01234567"


def encode(array, fmt="PNG", **save):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **save)
    return buffer.getvalue()


def loader(ls_url="", key="", trusted_paths=True, **overrides):
    settings = Settings(label_studio_url=ls_url, label_studio_api_key=key, fetch_timeout=5,
                        **{"allowed_image_hosts": ("127.0.0.1",), **overrides})
    return ImageLoader(settings, LabelStudioClient(ls_url, key), trusted_paths=trusted_paths)


def pixels(source, **settings) -> np.ndarray:
    return loader(**settings).load(source).pixels


def test_local_path_and_file_url(photos):
    loaded = loader().load(str(photos / "grace_hopper.jpg"))
    assert isinstance(loaded, LoadedImage) and (loaded.width, loaded.height, loaded.scale) == (512, 600, 1.0)
    image = loaded.pixels
    assert image.dtype == np.uint8 and image.shape == (600, 512, 3)
    same = pixels((photos / "grace_hopper.jpg").as_uri())
    np.testing.assert_array_equal(image, same)
    # RGB, not BGR: the photo's uniform is navy blue
    assert image[500:560, 100:200, 2].mean() > image[500:560, 100:200, 0].mean()


def test_exif_orientation_is_applied(tmp_path):
    upright = np.zeros((40, 20, 3), np.uint8)
    upright[:10] = 255  # white band at the top of a tall image
    stored = Image.fromarray(np.rot90(upright, k=1).copy())  # stored lying on its side
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": undoes the CCW rotation above
    path = tmp_path / "rotated.jpg"
    stored.save(path, "JPEG", exif=exif, quality=95)
    loaded = loader().load(str(path))
    assert loaded.pixels.shape[:2] == (40, 20) and (loaded.width, loaded.height) == (20, 40)
    assert loaded.pixels[:8].mean() > 200 and loaded.pixels[15:].mean() < 50


@pytest.mark.parametrize("make, shape", [
    (lambda: encode(np.full((30, 40), 128, np.uint8)), (30, 40, 3)),  # greyscale
    (lambda: encode(np.full((30, 40, 4), 200, np.uint8)), (30, 40, 3)),  # RGBA
    (lambda: cv2.imencode(".png", np.full((30, 40), 40000, np.uint16))[1].tobytes(), (30, 40, 3)),  # 16-bit
    (lambda: encode(np.full((30, 40, 3), 90, np.uint8), "GIF"), (30, 40, 3)),  # palette GIF (Pillow path)
])
def test_unusual_formats_decode_to_rgb8(tmp_path, make, shape):
    path = tmp_path / "image"
    path.write_bytes(make())
    image = pixels(str(path))
    assert image.shape == shape and image.dtype == np.uint8


def test_16_bit_values_scale_not_clip(tmp_path):
    path = tmp_path / "deep.png"
    path.write_bytes(cv2.imencode(".png", np.full((30, 40), 32768, np.uint16))[1].tobytes())
    assert 120 <= pixels(str(path)).mean() <= 135


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"this is a text file, not a picture", "not an image"),
    (encode(np.zeros((1, 1, 3), np.uint8)), "too small"),
])
def test_bad_files_fail_with_a_reason(tmp_path, content, message):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        loader().load(str(path))


def test_truncated_jpeg(tmp_path, photos):
    data = (photos / "grace_hopper.jpg").read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[:200])
    with pytest.raises(ImageError, match="grace|cut.jpg|corrupt|not an image"):
        loader().load(str(path))


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    # 20000 x 20000 of one colour compresses to a tiny PNG but would take 1.2 GB decoded.
    path = tmp_path / "bomb.png"
    Image.new("L", (20000, 20000)).save(path, optimize=True)
    assert path.stat().st_size < 1_000_000
    with pytest.raises(ImageError, match="MAX_IMAGE_PIXELS"):
        loader().load(str(path))


def test_missing_paths_and_schemes():
    with pytest.raises(ImageError, match="no such file"):
        loader().load("/nonexistent/photo.jpg")
    with pytest.raises(ImageError, match="scheme"):
        loader().load("s3://bucket/photo.jpg")
    with pytest.raises(ImageError, match="no image URL"):
        loader().load(None)
    with pytest.raises(ImageError, match="LABEL_STUDIO_URL"):
        loader().load("/data/upload/1/photo.jpg")


def test_http_download_and_errors(web, photos):
    url = web.serve("/a.jpg", (photos / "grace_hopper.jpg").read_bytes())
    assert pixels(url).shape == (600, 512, 3)
    with pytest.raises(ImageError, match="HTTP 404"):
        loader().load(web.url + "/missing.jpg")
    with pytest.raises(ImageError, match="download failed"):
        loader().load("http://127.0.0.1:9/unreachable.jpg")
    big = web.serve("/big.jpg", b"x" * 5000)
    with pytest.raises(ImageError, match="MAX_IMAGE_BYTES"):
        loader(max_image_bytes=1000).load(big)


def test_legacy_token_goes_to_label_studio_only(web, other_web, photos):
    data = (photos / "grace_hopper.jpg").read_bytes()
    web.serve("/data/upload/1/a.jpg", data)
    elsewhere = other_web.serve("/b.jpg", data)
    images = loader(web.url, LEGACY_KEY)
    images.load("/data/upload/1/a.jpg")
    images.load(elsewhere)
    assert web.requests[-1][2]["Authorization"] == f"Token {LEGACY_KEY}"
    assert "Authorization" not in other_web.requests[-1][2]


def test_redirect_off_label_studio_drops_the_key(web, other_web, photos):
    target = other_web.serve("/c.jpg", (photos / "grace_hopper.jpg").read_bytes())
    web.serve("/data/upload/1/c.jpg", b"", status=302, headers={"Location": target})
    loader(web.url, LEGACY_KEY).load("/data/upload/1/c.jpg")
    assert web.requests[-1][2]["Authorization"] == f"Token {LEGACY_KEY}"
    assert all("Authorization" not in headers for _, _, headers in other_web.requests)


def test_personal_access_token_is_exchanged_and_refreshed(web, photos):
    pat = make_jwt({"token_type": "refresh", "exp": 4102444800})
    web.refresh_tokens.add(pat)
    web.serve("/data/upload/2/a.jpg", (photos / "grace_hopper.jpg").read_bytes(), bearer=True)
    images = loader(web.url, pat)
    assert images.load("/data/upload/2/a.jpg").pixels.shape == (600, 512, 3)
    refreshes = [r for r in web.requests if r[1] == "/api/token/refresh"]
    assert len(refreshes) == 1
    image_request = web.requests[-1]
    assert image_request[2]["Authorization"].startswith("Bearer ") and pat not in image_request[2]["Authorization"]
    # The access token is reused while valid...
    images.load("/data/upload/2/a.jpg")
    assert len([r for r in web.requests if r[1] == "/api/token/refresh"]) == 1
    # ...and renewed when Label Studio stops accepting it.
    web.valid_access_tokens.clear()
    assert images.load("/data/upload/2/a.jpg").pixels.shape == (600, 512, 3)
    assert len([r for r in web.requests if r[1] == "/api/token/refresh"]) == 2


def test_rejected_personal_access_token_says_so(web):
    pat = make_jwt({"token_type": "refresh"})
    web.serve("/data/upload/3/a.jpg", b"", bearer=True)
    with pytest.raises(ImageError, match="personal access token"):
        loader(web.url, pat).load("/data/upload/3/a.jpg")


def test_local_files_root(tmp_path, photos):
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.jpg").write_bytes((photos / "grace_hopper.jpg").read_bytes())
    images = loader("http://127.0.0.1:9", LEGACY_KEY, trusted_paths=False, local_files_root=tmp_path)
    assert images.load("/data/local-files/?d=dir/a.jpg").pixels.shape == (600, 512, 3)
    with pytest.raises(ImageError, match="outside LOCAL_FILES_ROOT"):
        images.load("/data/local-files/?d=../../etc/passwd")


def photo_at(size: tuple[int, int], photos, fmt: str = "JPEG", **save) -> bytes:
    """The Grace Hopper photo stretched to `size` (width, height), encoded as `fmt`."""
    image = Image.open(photos / "grace_hopper.jpg").convert("RGB").resize(size, Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_large_images_are_decoded_reduced_with_their_original_size(tmp_path, photos, fmt):
    path = tmp_path / f"large.{fmt.lower()}"
    path.write_bytes(photo_at((1600, 1200), photos, fmt))
    full = loader().load(str(path))
    assert (full.width, full.height, full.scale) == (1600, 1200, 1.0) and full.pixels.shape == (1200, 1600, 3)
    reduced = loader(max_work_pixels=300_000).load(str(path))
    rows, cols = reduced.pixels.shape[:2]
    assert rows * cols <= 300_000 and rows * cols > 290_000 and (reduced.width, reduced.height) == (1600, 1200)
    assert reduced.scale == pytest.approx(cols / 1600) and abs(rows / cols - 0.75) < 0.01
    # The same picture: the full decode brought to the same size differs by little more than JPEG noise.
    expected = cv2.resize(full.pixels, (cols, rows), interpolation=cv2.INTER_AREA)
    assert np.abs(expected.astype(int) - reduced.pixels).mean() < 3


def test_reduced_decoding_keeps_the_exif_orientation(tmp_path, photos):
    upright = np.asarray(Image.open(photos / "grace_hopper.jpg").convert("RGB").resize((800, 1000)))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored lying on its side; "rotate 90 CW to view"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(np.rot90(upright, k=1).copy()).save(path, "JPEG", exif=exif, quality=95)
    reduced = loader(max_work_pixels=50_000).load(str(path))
    rows, cols = reduced.pixels.shape[:2]
    assert (reduced.width, reduced.height) == (800, 1000) and rows > cols and rows * cols <= 50_000
    expected = cv2.resize(upright, (cols, rows), interpolation=cv2.INTER_AREA)
    assert np.abs(expected.astype(int) - reduced.pixels).mean() < 6


def test_formats_browsers_do_not_show_are_refused(tmp_path):
    path = tmp_path / "image.ppm"
    path.write_bytes(encode(np.full((30, 40, 3), 90, np.uint8), "PPM"))
    with pytest.raises(ImageError, match="PPM images are not read"):
        loader().load(str(path))
