"""Webhook target checks in-process: every internal form is refused, the allow-list works, the POST is pinned."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from gradhealth.store import webhook_targets as targets
from gradhealth.store.settings import Settings
from gradhealth.workers.webhooks import post_signed

from .receiver import Receiver

NONE = targets.parse_allow("")
INTERNAL_URLS = [
    "http://127.0.0.1:8080/hook",
    "http://localhost/hook",
    "http://127.1/hook",
    "http://0x7f000001/hook",
    "http://2130706433/hook",
    "http://0.0.0.0/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/hook",
    "http://172.16.5.4/hook",
    "http://192.168.1.1/hook",
    "http://100.64.0.1/hook",
    "http://224.0.0.1/hook",
    "http://255.255.255.255/hook",
    "http://[::1]:22/",
    "http://[::]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::ffff:7f00:1]/hook",
    "http://[fe80::1]/hook",
    "http://[fd00:ec2::254]/hook",
    "http://[fec0::1]/hook",
    "http://[ff02::1]/hook",
    "http://[2002:7f00:1::1]/hook",
    "http://[64:ff9b::a9fe:a9fe]/hook",
]


@pytest.mark.parametrize("url", INTERNAL_URLS)
def test_internal_addresses_are_refused_in_every_form(url: str) -> None:
    with pytest.raises(targets.TargetError) as refused:
        targets.check(url, NONE)
    assert refused.value.category == targets.REFUSED
    assert "internal address" in str(refused.value) and targets.ALLOW_SETTING in str(refused.value)


@pytest.mark.parametrize(
    "url, needle",
    [
        ("http://user:pw@example.com/hook", "credentials"),
        ("http://user@example.com/hook", "credentials"),
        ("ftp://example.com/hook", "http://"),
        ("http:///hook", "http://"),
        ("http://exa mple.com/", "does not resolve"),
        ("http://0177.0.0.1/hook", "not a valid URL"),  # octal: the HTTP client refuses it too
    ],
)
def test_malformed_urls_are_refused(url: str, needle: str) -> None:
    with pytest.raises(targets.TargetError, match=needle):
        targets.check(url, NONE)


def test_every_resolved_address_must_be_public(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"mixed.test": ["93.184.216.34", "10.1.2.3"], "public.test": ["93.184.216.34"]})
    with pytest.raises(targets.TargetError):
        targets.check("https://mixed.test/hook", NONE)
    assert targets.check("https://public.test/hook", NONE).address == "93.184.216.34"


def test_allow_list_names_hosts_and_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"hooks.internal": ["10.9.8.7"], "other.internal": ["10.9.8.8"]})
    allow = targets.parse_allow(" hooks.internal. , 127.0.0.1, 192.168.0.0/16, [::1]")
    assert allow.hosts == frozenset({"hooks.internal"})
    assert targets.check("http://HOOKS.internal/x", allow).address == "10.9.8.7"
    assert targets.check("http://127.0.0.1:9/x", allow).address == "127.0.0.1"
    assert targets.check("http://192.168.4.4/x", allow).address == "192.168.4.4"
    assert targets.check("http://[::1]:9/x", allow).address == "::1"
    for url in ("http://other.internal/x", "http://127.0.0.2/x", "http://169.254.169.254/"):
        with pytest.raises(targets.TargetError):
            targets.check(url, allow)


def test_public_addresses_pass() -> None:
    for text in ("93.184.216.34", "8.8.8.8", "2606:4700::1111", "2002:5db8:d822::1"):
        assert not targets.is_internal(ipaddress.ip_address(text)), text


def fake_dns(monkeypatch: pytest.MonkeyPatch, names: dict[str, list[str]]) -> list[str]:
    """Answer getaddrinfo for made-up names (numeric hosts still go to the real resolver); log the lookups."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in names:
            asked.append(host)
            answer = names[host]
            return [
                (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answer
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def test_the_post_connects_to_the_checked_address_with_the_url_host(
    monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    """A made-up name the HTTP client itself could never resolve: delivery works only if the POST is pinned."""
    fake_dns(monkeypatch, {"hooks.test": ["127.0.0.1"]})
    port = receiver.url.split(":")[2].split("/")[0]
    settings = Settings(webhook_allow_hosts="hooks.test", webhook_timeout_seconds=5)
    status, category, error = post_signed(settings, f"http://hooks.test:{port}/hook", "s", b"{}", "d1")
    assert (status, category, error) == (200, None, None)
    [request] = receiver.wait_for(1)
    assert request.headers["host"] == f"hooks.test:{port}"


def test_a_name_that_rebinds_to_an_internal_address_is_refused_at_send_time(
    monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    port = receiver.url.split(":")[2].split("/")[0]
    url = f"http://rebind.test:{port}/hook"
    answers = {"rebind.test": ["93.184.216.34"]}
    fake_dns(monkeypatch, answers)
    targets.check(url, NONE)  # what the API saw at creation
    answers["rebind.test"] = ["127.0.0.1"]  # the attacker's DNS now points at the service's own host
    status, category, error = post_signed(Settings(webhook_timeout_seconds=5), url, "s", b"{}", "d2")
    assert (status, category) == (None, targets.REFUSED) and "127.0.0.1" not in (error or "")
    assert receiver.requests == []


def test_failures_are_categories_not_exception_text(receiver: Receiver) -> None:
    settings = Settings(webhook_allow_hosts="127.0.0.1", webhook_timeout_seconds=5)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: connection refused
        status, category, error = post_signed(settings, f"http://127.0.0.1:{port}/", "s", b"{}", "d3")
    assert (status, category) == (None, targets.CONNECT_FAILED)
    assert "Errno" not in (error or "") and "Error" not in (error or "")
    receiver.codes = [302]
    status, category, error = post_signed(settings, receiver.url, "s", b"{}", "d4")
    assert (status, category, error) == (302, targets.HTTP_STATUS, "the receiver answered HTTP 302")  # not followed
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # accepts, never answers
        quick = Settings(webhook_allow_hosts="127.0.0.1", webhook_timeout_seconds=0.3)
        status, category, error = post_signed(quick, f"http://127.0.0.1:{silent.getsockname()[1]}/", "s", b"{}", "d5")
    assert (status, category) == (None, targets.TIMEOUT)
