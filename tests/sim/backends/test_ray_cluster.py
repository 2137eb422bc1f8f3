"""Joining Ray: a local instance, an existing cluster by address, or a clear refusal."""

from __future__ import annotations

import socket

import pytest
import ray

from fedcare.core.errors import ConfigError
from fedcare.sim.backends.ray_backend import RayBackend


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_address_where_no_cluster_answers_is_refused_at_once() -> None:
    port = _closed_port()
    with pytest.raises(
        ConfigError,
        match=rf"--address 127.0.0.1:{port}: no Ray cluster answers there .*`ray start --head`",
    ):
        RayBackend(f"127.0.0.1:{port}")


def test_an_address_that_is_not_host_port_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"--address 'head-node': expected the HOST:PORT"):
        RayBackend("head-node")


def test_a_backend_joins_the_running_instance_and_leaves_it_running(ray_instance: str) -> None:
    with RayBackend(ray_instance) as backend:
        assert not backend.started
    assert ray.is_initialized()
