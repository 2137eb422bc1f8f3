"""``HOST:PORT`` options (``--address``, ``--coordinator``) checked before anything runs.

gRPC takes a port number modulo 65536 and a host it cannot resolve only when it tries, so
``localhost:99999`` would listen on port 34463 and a typo in a host name would surface as
"could not reach the coordinator". Both are refused here with the option's name.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
from dataclasses import dataclass

from fedcare.core.errors import ConfigError

MAX_PORT = 65535
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")  # RFC 1123 host name label


@dataclass(frozen=True)
class Address:
    host: str  # as given; an IPv6 address without its brackets
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_address(text: str, option: str, *, any_port: bool = False) -> Address:
    """``text`` as HOST:PORT, or a ConfigError naming ``option``, what was expected and what
    was found. The host is a name (RFC 1123), an IPv4 address or a bracketed IPv6 address;
    the port is 1-65535, or 0 ("any free port") where ``any_port``."""
    host, sep, port = text.strip().rpartition(":")
    expected = "HOST:PORT (e.g. coord.example.org:50051, 127.0.0.1:50051 or [::1]:50051)"
    if not sep or not host or not port:
        raise ConfigError(f"{option} must be {expected}, found '{text}'")
    return Address(_host(host, text, option), _port(port, text, option, any_port))


def _host(host: str, text: str, option: str) -> str:
    if host.startswith("[") and host.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            raise ConfigError(
                f"{option} '{text}': '{host}' is not an IPv6 address in brackets"
            ) from None
    if ":" in host:
        raise ConfigError(
            f"{option} '{text}': an IPv6 address goes in brackets, e.g. [{host}]:PORT"
        )
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ConfigError(
            f"{option} '{text}': '{host}' is not a host name (letters, digits and hyphens "
            "in dot-separated parts) or an IP address"
        )
    if labels[-1].isdigit():  # 10.0.0.300 or 127.1: looks like an address, is not one
        raise ConfigError(f"{option} '{text}': '{host}' is not a valid IPv4 address")
    return host


def _port(port: str, text: str, option: str, any_port: bool) -> int:
    low = 0 if any_port else 1
    allowed = f"{low}-{MAX_PORT}" + (" (0: any free port)" if any_port else "")
    if not port.isascii() or not port.isdigit():
        raise ConfigError(f"{option} '{text}': the port must be a number {allowed}, found '{port}'")
    number = int(port)
    if not low <= number <= MAX_PORT:
        raise ConfigError(f"{option} '{text}': port {number} is out of range; expected {allowed}")
    return number


def check_can_listen(address: Address, option: str) -> None:
    """ConfigError if nothing could listen on ``address`` now: the port is taken (another
    coordinator?) or the host is not this machine's. Checked before anything is written;
    the server refuses a taken port too (gRPC's port sharing is switched off)."""
    if address.port == 0:
        return
    try:
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(f"{option} '{address}': cannot resolve '{address.host}': {exc}") from None
    family, kind, proto, _, where = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As the server does: a port left in TIME_WAIT by a stopped coordinator is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(where)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"{option} '{address}': port {address.port} is already in use on this "
                    "machine (another coordinator?); stop it or choose another port"
                ) from None
            raise ConfigError(
                f"{option} '{address}': cannot listen there ({exc.strerror}); use an address "
                "of this machine, or 0.0.0.0 for all of them"
            ) from None
