"""Attacks on where images come from (issue 9), against loopback servers standing in for Label Studio and for
a foreign host: each test asserts the refusal and, where a key is at stake, that the foreign server never
received an Authorization header (nor, mostly, any request at all)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from backend.config import Settings
from backend.service.images import ImageError, ImageLoader
from backend.service.label_studio import LabelStudioClient, LabelStudioError
from tests.conftest import REPO_ROOT, LoopbackServer, make_jwt

LEGACY_KEY = "0123456789abcdef0123456789abcdef01234567"


def loader(ls_url: str = "", key: str = "", trusted_paths: bool = False, **overrides) -> ImageLoader:
    settings = Settings(label_studio_url=ls_url, label_studio_api_key=key, **{"fetch_timeout": 5, **overrides})
    return ImageLoader(settings, LabelStudioClient(ls_url, key, timeout=5), trusted_paths=trusted_paths)


def authorizations(server) -> list[str]:
    return [headers["Authorization"] for _, _, headers in server.requests if "Authorization" in headers]


def host_port(server) -> str:
    return server.url.removeprefix("http://")


@pytest.fixture
def photo(photos) -> bytes:
    return (photos / "grace_hopper.jpg").read_bytes()


# The API key ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("template, reason", [
    ("http://{other}\\@{ls}/x.jpg", "backslash"),  # the reported leak: urlsplit saw LS, urllib3 connected to OTHER
    ("http://{other}/x.jpg\\@{ls}/x.jpg", "backslash"),
    ("http://{ls}@{other}/x.jpg", "user name"),
    ("http://user:pass@{other}/x.jpg", "user name"),
    ("http://{other}\t@{ls}/x.jpg", "whitespace"),
    ("http://{other} @{ls}/x.jpg", "whitespace"),
    ("http://{other}\n/x.jpg", "whitespace"),
    ("http://{other}\x00@{ls}/x.jpg", "control character"),
    ("http://{other}\u200b@{ls}/x.jpg", "control character"),
])
def test_urls_that_parsers_read_differently_are_refused(web, other_web, photo, template, reason):
    for server in (web, other_web):
        server.serve("/x.jpg", photo)
    images = loader(web.url, LEGACY_KEY, allowed_image_hosts=("127.0.0.1",))
    url = template.format(other=host_port(other_web), ls=host_port(web))
    with pytest.raises(ImageError, match=reason):
        images.load(url)
    assert other_web.requests == [] and web.requests == []


def test_a_full_url_is_never_sent_the_key_only_its_media_path_is_rebuilt_on_label_studio(web, photo):
    """Label Studio started with LABEL_STUDIO_HOST writes uploads as full URLs on its own address: the backend
    takes only their media path and builds the request from LABEL_STUDIO_URL itself."""
    web.serve("/data/upload/1/a.jpg", photo)
    web.serve("/elsewhere/a.jpg", photo)
    images = loader(web.url, LEGACY_KEY, allowed_image_hosts=("localhost",))
    # Another name for Label Studio's host, or a path that is not Label Studio's media: fetched as any web
    # image, without the key.
    for url in (web.url.replace("127.0.0.1", "localhost") + "/data/upload/1/a.jpg", web.url + "/elsewhere/a.jpg"):
        assert images.load(url).width == 512
    assert len(web.requests) == 2 and authorizations(web) == []
    for source in (web.url + "/data/upload/1/a.jpg", "/data/upload/1/a.jpg"):
        images.load(source)
    assert authorizations(web) == [f"Token {LEGACY_KEY}"] * 2
    assert [path for _, path, _ in web.requests[2:]] == ["/data/upload/1/a.jpg"] * 2


def test_a_full_url_refused_by_label_studio_says_why_there_is_no_key(web):
    pat = make_jwt({"token_type": "refresh", "exp": 4102444800})
    web.refresh_tokens.add(pat)
    web.serve("/files/a.jpg", b"", bearer=True)  # on Label Studio's address, but none of its media paths
    with pytest.raises(ImageError, match="HTTP 401.*never carries LABEL_STUDIO_API_KEY.*/data/upload/"):
        loader(web.url, pat).load(web.url + "/files/a.jpg")
    assert authorizations(web) == []


def test_redirects_keep_the_key_on_label_studio_only(web, other_web, photo):
    web.serve("/data/upload/1/moved.jpg", b"", status=302, headers={"Location": "/data/upload/1/a.jpg"})
    web.serve("/data/upload/1/a.jpg", photo)
    images = loader(web.url, LEGACY_KEY, allowed_image_hosts=("127.0.0.1",))
    images.load("/data/upload/1/moved.jpg")  # same origin: followed with the key
    assert authorizations(web) == [f"Token {LEGACY_KEY}"] * 2
    # A caller's URL that redirects onto Label Studio gets no key there either.
    other_web.serve("/bounce.jpg", b"", status=302, headers={"Location": web.url + "/data/upload/1/a.jpg"})
    images.load(other_web.url + "/bounce.jpg")
    assert web.requests[-1][1] == "/data/upload/1/a.jpg" and "Authorization" not in web.requests[-1][2]
    assert authorizations(other_web) == []


def test_a_redirect_to_label_studios_login_says_to_check_the_key(web):
    web.serve("/data/upload/1/a.jpg", b"", status=302, headers={"Location": "/user/login/?next=/data/upload/1/a.jpg"})
    with pytest.raises(ImageError, match="asked for a login: check LABEL_STUDIO_API_KEY"):
        loader(web.url, LEGACY_KEY).load("/data/upload/1/a.jpg")
    assert [path for _, path, _ in web.requests] == ["/data/upload/1/a.jpg"]


@pytest.mark.parametrize("source", [
    "/api/users/",  # not a media path: a local path to the loader, never a Label Studio request
    "/api/projects/1/export?exportType=JSON",
    "/data/upload/../../api/users/",
    "/data/upload/%2e%2e/%2e%2e/api/users/",
])
def test_only_label_studio_media_paths_are_fetched_with_the_key(web, source):
    with pytest.raises(ImageError):
        loader(web.url, LEGACY_KEY).load(source)
    assert web.requests == []


def test_label_studio_client_request(web, other_web):
    pat = make_jwt({"token_type": "refresh", "exp": 4102444800})
    web.refresh_tokens.add(pat)
    web.serve("/api/projects/1/", json.dumps({"id": 1}).encode(), headers={"Content-Type": "application/json"},
              bearer=True)
    client = LabelStudioClient(web.url, pat)
    assert client.request("GET", "/api/projects/1/").json() == {"id": 1}
    web.valid_access_tokens.clear()  # the access token expired: renewed once, and the request repeated
    assert client.request("GET", "/api/projects/1/").json() == {"id": 1}
    assert [path for _, path, _ in web.requests].count("/api/token/refresh") == 2
    # A redirect off Label Studio is handed back, not followed: the caller follows it without the key.
    web.serve("/api/elsewhere/", b"", status=302, headers={"Location": other_web.url + "/x"})
    response = client.request("GET", "/api/elsewhere/")
    assert response.status_code == 302 and other_web.requests == []
    for path in (other_web.url + "/api/x", "//" + host_port(other_web) + "/api/x", "api/x", "/etc/passwd",
                 "/api/../data/x", "/api/x\\@" + host_port(other_web), "/api/x y", "/user/login/"):
        with pytest.raises(LabelStudioError, match="not sent to Label Studio"):
            client.request("GET", path)
    assert other_web.requests == []


@pytest.mark.parametrize("url", ["http://user:secret@ls:8080", "http://ls\\@other:8080", "ftp://ls",
                                 "http://ls:8080/?x=1"])
def test_a_label_studio_url_that_could_mislead_is_refused_without_echoing_it(url):
    with pytest.raises(LabelStudioError, match="LABEL_STUDIO_URL must be") as error:
        LabelStudioClient(url, LEGACY_KEY)
    assert "secret" not in str(error.value)


# Local files --------------------------------------------------------------------------------------------------

def test_local_files_need_local_files_root(photos):
    path = photos / "grace_hopper.jpg"
    for source in (str(path), path.as_uri(), "grace_hopper.jpg"):
        with pytest.raises(ImageError, match="LOCAL_FILES_ROOT, which is not set"):
            loader().load(source)


def test_local_files_are_read_under_local_files_root_only(tmp_path, photo):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "dir").mkdir(parents=True)
    outside.mkdir()
    (root / "dir" / "a.jpg").write_bytes(photo)
    (outside / "secret.jpg").write_bytes(photo)
    (root / "inside_link.jpg").symlink_to(root / "dir" / "a.jpg")
    (root / "escape.jpg").symlink_to(outside / "secret.jpg")
    (root / "escape_dir").symlink_to(outside)
    images = loader(local_files_root=root)
    for source in (str(root / "dir" / "a.jpg"), "dir/a.jpg", (root / "dir" / "a.jpg").as_uri(),
                   str(root / "inside_link.jpg"), "/data/local-files/?d=dir/a.jpg"):
        assert images.load(source).width == 512, source
    for source in (str(outside / "secret.jpg"), (outside / "secret.jpg").as_uri(), "../outside/secret.jpg",
                   str(root / "escape.jpg"), str(root / "escape_dir" / "secret.jpg"), "/etc/passwd",
                   "/data/local-files/?d=../outside/secret.jpg", f"/data/local-files/?d={outside}/secret.jpg",
                   "/data/local-files/?d=escape.jpg"):
        with pytest.raises(ImageError, match="outside LOCAL_FILES_ROOT"):
            images.load(source)


def load_in_thread(images: ImageLoader, source: str, seconds: float = 5) -> BaseException | None:
    """What loading `source` raised, failing the test if it takes longer than `seconds` (a blocked read)."""
    outcome = []

    def run():
        try:
            images.load(source)
            outcome.append(None)
        except BaseException as error:  # noqa: BLE001 (handed to the test)
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"loading {source} blocked for more than {seconds} s"
    return outcome[0]


def test_only_regular_files_are_read_and_nothing_blocks(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    os.mkfifo(root / "fifo.jpg")
    (root / "folder.jpg").mkdir()
    (root / "zero.jpg").symlink_to("/dev/zero")
    confined = loader(local_files_root=root)
    for source in ("fifo.jpg", "/data/local-files/?d=fifo.jpg", "folder.jpg"):
        error = load_in_thread(confined, source)
        assert isinstance(error, ImageError) and "not a regular file" in str(error), source
    assert "outside LOCAL_FILES_ROOT" in str(load_in_thread(confined, "zero.jpg"))
    trusted = loader(trusted_paths=True)  # the command line: any path, still regular files only
    for source in (str(root / "fifo.jpg"), "/dev/zero", str(root / "zero.jpg"), "/dev/urandom", "/proc/self"):
        error = load_in_thread(trusted, source)
        assert isinstance(error, ImageError) and "not a regular file" in str(error), source
    for source in ("/proc/self/environ", "/proc/self/cmdline"):  # regular files that say 0 bytes
        error = load_in_thread(trusted, source)
        assert isinstance(error, ImageError) and "empty (0 bytes)" in str(error), source


def test_local_reads_stop_at_max_image_bytes(tmp_path, photo):
    (tmp_path / "a.jpg").write_bytes(photo)
    with pytest.raises(ImageError, match="over MAX_IMAGE_BYTES=1000"):
        loader(local_files_root=tmp_path, max_image_bytes=1000).load("a.jpg")
    with pytest.raises(ImageError, match="another host"):
        loader(trusted_paths=True).load("file://fileserver/share/a.jpg")


# SSRF -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("url, kind", [
    ("http://127.0.0.1:{port}/a.jpg", "loopback"),
    ("http://localhost:{port}/a.jpg", "loopback"),
    ("http://127.1:{port}/a.jpg", "loopback"),
    ("http://2130706433:{port}/a.jpg", "loopback"),
    ("http://0x7f.1:{port}/a.jpg", "loopback"),
    ("http://[::1]:{port}/a.jpg", "loopback"),
    ("http://[::ffff:127.0.0.1]:{port}/a.jpg", "loopback"),
    ("http://0.0.0.0:{port}/a.jpg", "unspecified"),
    ("http://[::]:{port}/a.jpg", "unspecified"),
    ("http://10.1.2.3/a.jpg", "private"),
    ("http://192.168.0.1/a.jpg", "private"),
    ("http://172.16.0.1/a.jpg", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://100.64.0.1/a.jpg", "not a public address"),
    ("http://224.0.0.1/a.jpg", "multicast"),
    ("http://240.0.0.1/a.jpg", "private|reserved"),
    ("http://[fe80::1]/a.jpg", "link-local"),
    ("http://[fc00::1]/a.jpg", "private"),
    ("https://[2002:7f00:1::]/a.jpg", "leads to 127.0.0.1"),  # 6to4
])
def test_non_public_addresses_are_refused_in_any_spelling(web, photo, url, kind):
    web.serve("/a.jpg", photo)
    with pytest.raises(ImageError, match=f"({kind}).*ALLOWED_IMAGE_HOSTS"):
        loader().load(url.format(port=web.server.server_port))
    assert web.requests == []


def test_allowed_image_hosts(web, photo):
    port = web.server.server_port
    web.serve("/a.jpg", photo)
    assert loader(allowed_image_hosts=("127.0.0.1",)).load(f"http://127.0.0.1:{port}/a.jpg").width == 512
    assert loader(allowed_image_hosts=("127.0.0.0/8",)).load(f"http://2130706433:{port}/a.jpg").width == 512
    by_name = loader(allowed_image_hosts=("localhost",))
    assert by_name.load(f"http://localhost:{port}/a.jpg").width == 512
    with pytest.raises(ImageError, match="loopback"):  # the name is allowed, not the address
        by_name.load(f"http://127.0.0.1:{port}/a.jpg")
    with pytest.raises(ValueError, match="ALLOWED_IMAGE_HOSTS"):
        loader(allowed_image_hosts=("not a host!",))


def test_label_studios_own_host_and_port_are_allowed_and_no_other_port(web, other_web, photo):
    web.serve("/a.jpg", photo)
    other_web.serve("/a.jpg", photo)
    images = loader(web.url)
    assert images.load(web.url + "/a.jpg").width == 512
    with pytest.raises(ImageError, match="loopback.*ALLOWED_IMAGE_HOSTS"):
        images.load(other_web.url + "/a.jpg")
    assert other_web.requests == []


def test_every_redirect_is_checked_again(web, other_web, photo):
    other_web.serve("/a.jpg", photo)
    images = loader(allowed_image_hosts=("localhost",))
    start = web.url.replace("127.0.0.1", "localhost")
    web.serve("/to-loopback.jpg", b"", status=302, headers={"Location": other_web.url + "/a.jpg"})
    with pytest.raises(ImageError, match="loopback.*ALLOWED_IMAGE_HOSTS"):
        images.load(start + "/to-loopback.jpg")
    assert other_web.requests == []
    web.serve("/to-file.jpg", b"", status=301, headers={"Location": "file:///etc/passwd"})
    with pytest.raises(ImageError, match="only http"):
        images.load(start + "/to-file.jpg")
    web.serve("/to-backslash.jpg", b"", status=302, headers={"Location": f"http://{host_port(other_web)}\\@localhost/"})
    with pytest.raises(ImageError, match="backslash"):
        images.load(start + "/to-backslash.jpg")
    web.serve("/loop.jpg", b"", status=302, headers={"Location": "/loop.jpg"})
    with pytest.raises(ImageError, match="more than 5 redirects"):
        images.load(start + "/loop.jpg")
    assert other_web.requests == []


@pytest.fixture
def resolver(monkeypatch):
    """A DNS of the test's own: names it maps answer with the listed addresses, one list per lookup."""
    answers: dict[str, list[list[str]]] = {}
    asked: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            return real(host, port, *args, **kwargs)
        asked.append(host)
        addresses = answers[host][min(asked.count(host), len(answers[host])) - 1]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers, asked


def test_the_connection_goes_to_the_address_that_was_checked(web, photo, resolver):
    answers, asked = resolver
    web.serve("/a.jpg", photo)
    port = web.server.server_port
    # Checked and allowed: 127.0.0.1; a second lookup (which a client resolving again would make) would say
    # an address nobody allowed.
    answers["images.example"] = [["127.0.0.1"], ["127.0.0.2"]]
    images = loader(allowed_image_hosts=("127.0.0.1/32",))
    assert images.load(f"http://images.example:{port}/a.jpg").width == 512
    assert asked == ["images.example"]
    assert web.requests[-1][2]["Host"] == f"images.example:{port}"  # the URL's host name, not the address
    # DNS rebinding the other way: a public address when checked, loopback a moment later. Only the public
    # one is ever connected to (here: nothing answers there), never the loopback server.
    answers["rebind.example"] = [["192.0.0.9"], ["127.0.0.1"]]  # 192.0.0.9/32 is global (IANA, RFC 7723)
    with pytest.raises(ImageError, match="download failed|FETCH_TIMEOUT"):
        loader(fetch_timeout=1).load(f"http://rebind.example:{port}/a.jpg")
    assert len(web.requests) == 1


def test_a_name_lookup_that_hangs_is_within_fetch_timeout(monkeypatch):
    released = threading.Event()
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host == "slow-dns.example":
            released.wait(30)  # a resolver whose servers never answer
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    images = loader(fetch_timeout=1)
    try:
        started = time.monotonic()
        with pytest.raises(ImageError, match=r"FETCH_TIMEOUT=1 s \(looking up slow-dns.example"):
            images.load("http://slow-dns.example/a.jpg")
        assert time.monotonic() - started < 2
        # Every resolver thread stuck: later lookups still end within their own deadlines.
        for _ in range(6):
            with pytest.raises(ImageError, match="FETCH_TIMEOUT"):
                images.load("http://slow-dns.example/b.jpg")
        assert time.monotonic() - started < 9
    finally:
        released.set()


def make_certificate(directory: Path, host: str) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    key, cert = directory / f"{host}.key", directory / f"{host}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", str(key),
                    "-out", str(cert), "-subj", f"/CN={host}", "-addext", f"subjectAltName=DNS:{host}"],
                   check=True, capture_output=True)
    return key, cert


def test_https_checks_the_certificate_of_the_urls_host_at_the_checked_address(tmp_path, web, photo, resolver,
                                                                              monkeypatch):
    key, cert = make_certificate(tmp_path, "images.example")
    web.serve("/a.jpg", photo)
    names = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda connection, name, _: names.append(name)
    web.server.socket = context.wrap_socket(web.server.socket, server_side=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust the test certificate
    answers, _ = resolver
    answers["images.example"] = answers["impostor.example"] = [["127.0.0.1"]]
    images = loader(allowed_image_hosts=("127.0.0.1",))
    port = web.server.server_port
    assert images.load(f"https://images.example:{port}/a.jpg").width == 512
    assert names == ["images.example"] and web.requests[-1][2]["Host"] == f"images.example:{port}"
    with pytest.raises(ImageError, match="download failed.*(CERTIFICATE|certificate|hostname)"):
        images.load(f"https://impostor.example:{port}/a.jpg")  # same address, certificate of another name


# Time and size bounds -----------------------------------------------------------------------------------------

class ScriptedServer(LoopbackServer):
    """A loopback server that answers every GET by running `script(wfile)`: raw bytes, as slowly as it likes."""

    def __init__(self, script):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                try:
                    script(self.wfile)
                except OSError:  # the client hung up
                    pass

        super().__init__(Handler)


def drip(head: bytes, body: bytes, every: float):
    def script(wfile):
        wfile.write(head)
        for byte in body:
            time.sleep(every)
            wfile.write(bytes([byte]))
    return script


@pytest.fixture
def scripted():
    servers = []

    def start(script) -> ScriptedServer:
        servers.append(ScriptedServer(script))
        return servers[-1]
    yield start
    for server in servers:
        server.close()


@pytest.mark.parametrize("head, body", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", b"x" * 1000),  # a body, one byte every 2 s
    (b"HTTP/1.1 200 OK\r\n", b"X-Slow: " + b"x" * 1000),  # headers that never end
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"1\r\nx\r\n" * 200),
])
@pytest.mark.parametrize("every", [2.0, 0.2])
def test_a_download_gets_fetch_timeout_in_all(scripted, head, body, every):
    server = scripted(drip(head, body, every))
    started = time.monotonic()
    with pytest.raises(ImageError, match="not downloaded within FETCH_TIMEOUT=1 s"):
        loader(fetch_timeout=1, allowed_image_hosts=("127.0.0.1",)).load(server.url + "/slow.jpg")
    assert time.monotonic() - started < 1.6


def test_a_download_from_label_studio_gets_fetch_timeout_in_all(scripted):
    server = scripted(drip(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", b"x" * 1000, 0.2))
    started = time.monotonic()
    with pytest.raises(ImageError, match="FETCH_TIMEOUT=1 s"):
        loader(server.url, LEGACY_KEY, fetch_timeout=1).load("/data/upload/1/slow.jpg")
    assert time.monotonic() - started < 1.6


def test_a_deadline_spans_redirects(scripted):
    hops = []

    def slow_redirect(wfile):
        hops.append(time.monotonic())
        time.sleep(0.4)
        wfile.write(b"HTTP/1.1 302 Found\r\nLocation: /again\r\nContent-Length: 0\r\n\r\n")
    server = scripted(slow_redirect)
    with pytest.raises(ImageError, match="FETCH_TIMEOUT=1 s"):
        loader(fetch_timeout=1, allowed_image_hosts=("127.0.0.1",)).load(server.url + "/a.jpg")
    assert len(hops) <= 3


@pytest.mark.parametrize("response, message", [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"400\r\n" + b"x" * 1024 + b"\r\n" + b"0\r\n\r\n",
     "larger than MAX_IMAGE_BYTES=1000"),  # no length announced: counted while streaming
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n", "1000000000 bytes, over MAX_IMAGE_BYTES=1000"),
    (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 10\r\n\r\n0123456789", "gzip-encoded"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\nshort", "broke off after 5 of 500 bytes"),
])
def test_download_sizes_and_encodings(scripted, response, message):
    server = scripted(lambda wfile: wfile.write(response))
    with pytest.raises(ImageError, match=message):
        loader(max_image_bytes=1000, allowed_image_hosts=("127.0.0.1",)).load(server.url + "/a.jpg")


# Memory ------------------------------------------------------------------------------------------------------

# Peak resident memory of a fresh Python process (numpy, OpenCV and Pillow loaded: about 60 MiB) decoding one
# image with the default settings (MAX_IMAGE_PIXELS 80 Mpx, MAX_WORK_PIXELS 8 Mpx, so 2828 x 2828 for a square).
ATTACK_PEAK_MIB = 450  # the images of issue 9 (measured: 350, 63 and 210 MiB)
COSTLIEST_DECODER_PEAK_MIB = 800  # the costliest decoders at MAX_IMAGE_PIXELS (measured: GIF 733, progressive JPEG 579)

# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over exec, so a child of pytest would report
# pytest's own size.
PEAK_SCRIPT = """
import re, sys
from backend.config import Settings
from backend.service.images import ImageError, decode_image
try:
    image = decode_image(open(sys.argv[1], "rb").read(), sys.argv[1], Settings())
    outcome = [image.width, image.height, list(image.pixels.shape)]
except ImageError as error:
    outcome = str(error)
peak_kib = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)
print(int(peak_kib) / 1024, outcome)
"""


def decode_peak(path: Path) -> tuple[float, str]:
    done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
    peak, outcome = done.stdout.strip().split(" ", 1)
    return float(peak), outcome


def attack_image(directory: Path, kind: str) -> Path:
    path = directory / kind
    if kind == "8944x8944.png":  # 78 KB
        Image.new("L", (8944, 8944)).save(path, optimize=True)
    elif kind == "16x4999000.png":
        Image.new("L", (16, 4_999_000)).save(path, optimize=True)
    elif kind == "5000x5000.tif":
        Image.new("RGB", (5000, 5000)).save(path, compression="tiff_deflate")
    elif kind == "5000x5000-rgba16.tif":
        cv2.imwrite(str(path), np.zeros((5000, 5000, 4), np.uint16), [cv2.IMWRITE_TIFF_COMPRESSION, 8])
    elif kind == "8944x8944.gif":
        Image.new("P", (8944, 8944)).save(path)
    elif kind == "8944x8944-progressive.jpg":
        cv2.imwrite(str(path), np.zeros((8944, 8944, 3), np.uint8), [
            cv2.IMWRITE_JPEG_PROGRESSIVE, 1,  # libjpeg keeps every coefficient of a progressive JPEG
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
    return path


@pytest.mark.parametrize("kind, bound, decoded", [
    ("8944x8944.png", ATTACK_PEAK_MIB, "[8944, 8944, [2828, 2828, 3]]"),
    ("16x4999000.png", ATTACK_PEAK_MIB, "beyond what its decoder accepts"),
    ("5000x5000.tif", ATTACK_PEAK_MIB, "[5000, 5000, [2828, 2828, 3]]"),
    ("5000x5000-rgba16.tif", ATTACK_PEAK_MIB, "[5000, 5000, [2828, 2828, 3]]"),
    ("8944x8944.gif", COSTLIEST_DECODER_PEAK_MIB, "[8944, 8944, [2828, 2828, 3]]"),
    ("8944x8944-progressive.jpg", COSTLIEST_DECODER_PEAK_MIB, "[8944, 8944, [2828, 2828, 3]]"),
])
def test_decoding_the_worst_images_stays_within_its_memory_bound(tmp_path, kind, bound, decoded):
    peak, outcome = decode_peak(attack_image(tmp_path, kind))
    print(f"{kind}: peak {peak:.0f} MiB resident, {outcome}")
    assert decoded in outcome
    assert peak < bound, f"{kind}: decoding peaked at {peak:.0f} MiB, over {bound} MiB"
