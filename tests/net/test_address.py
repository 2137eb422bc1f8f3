"""HOST:PORT options are checked before anything runs (gRPC would wrap a port > 65535)."""

from __future__ import annotations

import pytest

from fedcare.core.errors import ConfigError
from fedcare.net.address import Address, parse_address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("localhost:50051", Address("localhost", 50051)),
        ("coord.example.org:1", Address("coord.example.org", 1)),
        ("0.0.0.0:65535", Address("0.0.0.0", 65535)),
        ("[::1]:50051", Address("::1", 50051)),
        ("hospital-7.local.:443", Address("hospital-7.local.", 443)),
    ],
)
def test_valid_addresses(text, expected):
    assert parse_address(text, "--coordinator") == expected


def test_port_zero_only_where_any_free_port_is_documented():
    assert parse_address("127.0.0.1:0", "--address", any_port=True).port == 0
    with pytest.raises(ConfigError, match=r"--coordinator '127.0.0.1:0': port 0 is out of range"):
        parse_address("127.0.0.1:0", "--coordinator")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("localhost:99999", "'localhost:99999': port 99999 is out of range; expected 0-65535"),
        ("localhost:-1", "the port must be a number 0-65535 (0: any free port), found '-1'"),
        ("localhost:５０", "the port must be a number"),
        ("localhost", "must be HOST:PORT"),
        (":50051", "must be HOST:PORT"),
        ("::1:50051", "an IPv6 address goes in brackets, e.g. [::1]:PORT"),
        ("[fe80::zz]:1", "'[fe80::zz]' is not an IPv6 address in brackets"),
        ("coord_centre:50051", "'coord_centre' is not a host name"),
        ("-bad.org:50051", "'-bad.org' is not a host name"),
        ("10.0.0.300:50051", "'10.0.0.300' is not a valid IPv4 address"),
        ("a..b:50051", "'a..b' is not a host name"),
    ],
)
def test_invalid_addresses_name_the_option_and_what_was_found(text, message):
    with pytest.raises(ConfigError, match=r"^--address") as err:
        parse_address(text, "--address", any_port=True)
    assert message in str(err.value)


def test_a_second_server_cannot_share_a_port_a_coordinator_listens_on():
    # gRPC's default SO_REUSEPORT would let it bind and take half of the sites' connections.
    from fedcare.net.channel import CoordinatorServer

    class Idle:
        def connected(self, link): ...
        def received(self, link, env): ...
        def disconnected(self, link, reason): ...

    first = CoordinatorServer("127.0.0.1:0", Idle(), tls=None, peer_check=None, insecure=True)
    port = first.start()
    try:
        with pytest.raises(ConfigError, match="port in use"):
            CoordinatorServer(f"127.0.0.1:{port}", Idle(), tls=None, peer_check=None, insecure=True)
    finally:
        first.stop(0)
