"""The --backend / --address options: every impossible combination is a clear error."""

from __future__ import annotations

import sys

import pytest

from fedcare.core.errors import ConfigError
from fedcare.sim.backends.choice import BackendChoice, choose_backend


def test_the_default_is_the_in_process_backend() -> None:
    choice = choose_backend()
    assert choice == BackendChoice("inprocess", None)
    assert not choice.is_ray
    assert choice.describe() == "in-process"


def test_ray_without_an_address_starts_a_local_instance() -> None:
    choice = choose_backend("ray")
    assert choice.is_ray
    assert choice.describe() == "local Ray instance"


def test_ray_with_an_address_joins_that_cluster() -> None:
    choice = choose_backend("ray", " 10.0.0.5:6379 ")
    assert choice.address == "10.0.0.5:6379"
    assert choice.describe() == "Ray cluster at 10.0.0.5:6379"


def test_an_unknown_backend_names_it_and_the_known_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"--backend: unknown backend 'rya'; expected one of: inprocess, ray"
    ):
        choose_backend("rya")


def test_an_address_without_the_ray_backend_is_refused() -> None:
    with pytest.raises(
        ConfigError,
        match=r"--address '10.0.0.5:6379' .* needs --backend ray \(found --backend inprocess\)",
    ):
        choose_backend("inprocess", "10.0.0.5:6379")


def test_an_empty_address_is_refused() -> None:
    with pytest.raises(ConfigError, match="--address: empty"):
        choose_backend("ray", "  ")


def test_ray_not_installed_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets without the extra
    monkeypatch.delitem(sys.modules, "fedcare.sim.backends.ray_backend", raising=False)
    with pytest.raises(
        ConfigError,
        match=r"needs Ray, which is not installed .*'ray'.*pip install 'fedcare\[ray\]'",
    ):
        choose_backend("ray")
