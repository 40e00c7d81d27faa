"""Settings: argument > MIRAGIC_* env var > default; base URL safety."""

from __future__ import annotations

import pytest

from miragic_nb import InvalidRequestError
from miragic_nb._core.config import (
    DEFAULT_BASE_URL,
    api_key_from_env,
    base_url_from_env,
    is_loopback_host,
    normalize_base_url,
    origin,
)


def test_key_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIRAGIC_API_KEY", "from-env")
    assert api_key_from_env("explicit") == "explicit"
    assert api_key_from_env() == "from-env"
    monkeypatch.setenv("MIRAGIC_API_KEY", "   ")
    assert api_key_from_env() is None
    monkeypatch.delenv("MIRAGIC_API_KEY")
    assert api_key_from_env() is None


def test_base_url_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIRAGIC_BASE_URL", raising=False)
    assert base_url_from_env() == DEFAULT_BASE_URL
    monkeypatch.setenv("MIRAGIC_BASE_URL", "https://devapi.miragic.ai/")
    assert base_url_from_env() == "https://devapi.miragic.ai"
    assert base_url_from_env("http://127.0.0.1:8787") == "http://127.0.0.1:8787"


@pytest.mark.parametrize(
    "url", ["http://backend.miragic.ai", "http://10.0.0.5:8787", "http://example.com"]
)
def test_plain_http_to_a_remote_host_is_refused(url: str) -> None:
    with pytest.raises(InvalidRequestError, match="plain http to a non-loopback host"):
        normalize_base_url(url)


@pytest.mark.parametrize(
    "url", ["ftp://x", "backend.miragic.ai", "https://user:pw@host", "https://host/?q=1"]
)
def test_malformed_base_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidRequestError):
        normalize_base_url(url)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("[::1]", True),
        ("::1", True),
        ("10.0.0.1", False),
        ("example.com", False),
    ],
)
def test_loopback_hosts(host: str, expected: bool) -> None:
    assert is_loopback_host(host) is expected


def test_origin_fills_default_ports() -> None:
    assert origin("https://Backend.Miragic.ai/x") == ("https", "backend.miragic.ai", 443)
    assert origin("http://127.0.0.1:8787/y") == ("http", "127.0.0.1", 8787)
    assert origin("https://a.example:443/") != origin("https://b.example/")
