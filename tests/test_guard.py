"""The Host check and the cross-site check, as pure functions (the browser suite proves them end to end)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuwarden.web.guard import allowed_host_names, cross_site_reason, host_name, is_loopback


@pytest.mark.parametrize(("header", "name"), [
    ("127.0.0.1:8000", "127.0.0.1"), ("LOCALHOST:8000", "localhost"), ("localhost.", "localhost"),
    ("[::1]:8000", "::1"), ("[::1]", "::1"), ("gpu-box", "gpu-box"), ("gpu-box.lab:80", "gpu-box.lab"),
    ("::1", None), ("[::1", None), ("[::1]x", None), ("", None), ("[]:80", None),
])
def test_host_header_names(header: str, name: str | None) -> None:
    assert host_name(header) == name


@given(st.text(max_size=100))
def test_host_header_parsing_never_crashes(header: str) -> None:
    host_name(header)


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("gpu-box", False), ("localhost.evil.com", False),
])
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_allowed_hosts_per_bind() -> None:
    assert allowed_host_names("127.0.0.1", ()) >= {"127.0.0.1", "localhost", "::1"}
    assert "evil.example" not in allowed_host_names("127.0.0.1", ())
    assert "::1" in allowed_host_names("::1", ())
    assert allowed_host_names("127.0.0.2", ()) >= {"127.0.0.2", "localhost"}
    lan = allowed_host_names("192.168.1.5", ("gpu-box",))
    assert lan == {"192.168.1.5", "gpu-box"}  # not bound to loopback: loopback names are not served
    wildcard = allowed_host_names("0.0.0.0", ("gpu-box",), interfaces=("10.1.2.3", "Workstation"))
    assert wildcard >= {"10.1.2.3", "workstation", "gpu-box", "localhost", "127.0.0.1"}
    assert "0.0.0.0" in wildcard and "evil.example" not in wildcard


SERVER = "127.0.0.1:8000"


@pytest.mark.parametrize(("method", "headers", "refused"), [
    ("GET", {"sec-fetch-site": "cross-site", "origin": "http://evil.example"}, False),  # reads change nothing
    ("POST", {}, False),  # curl, scripts: no browser, no ambient cookie to abuse
    ("POST", {"sec-fetch-site": "same-origin", "origin": "http://127.0.0.1:8000"}, False),
    ("POST", {"sec-fetch-site": "none"}, False),  # typed by the user
    ("POST", {"sec-fetch-site": "cross-site"}, True),
    ("POST", {"sec-fetch-site": "same-site", "origin": "http://127.0.0.1:9000"}, True),  # another port
    ("POST", {"origin": "http://evil.example"}, True),  # an older browser: Origin only
    ("POST", {"origin": "null"}, True),  # sandboxed frames, data: pages
    ("POST", {"origin": "https://127.0.0.1:8000"}, True),  # another scheme is another origin
    ("PUT", {"origin": "http://localhost:8000"}, True),  # another name for the same server is another origin
    ("DELETE", {"sec-fetch-site": "cross-site", "origin": "http://127.0.0.1:8000"}, True),
    ("PATCH", {"origin": "http://127.0.0.1:8000"}, False),
])
def test_cross_site_requests(method: str, headers: dict[str, str], refused: bool) -> None:
    reason = cross_site_reason(method, headers, SERVER, "http")
    assert (reason is not None) is refused
    if refused:
        assert reason is not None and reason.startswith("cross-site request refused")
