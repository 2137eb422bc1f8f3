"""Joining Ray: a local instance, an existing cluster by address, or a clear refusal."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
from safetensors.numpy import load_file
from typer.testing import CliRunner

from fedcare.cli.main import app
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


STUDY = """
name: ray-study
dataset: {name: synthetic, params: {num_sites: 6, samples_per_site: 24, num_features: 5}}
model: {name: mlp, params: {hidden: [8]}}
seeds: [0, 1]
rounds: 2
local: {optimizer: sgd, lr: 0.1, batch_size: 8}
baselines: [local]
simulator: {site_chunk: 2}
strategies:
  - name: fedavg
  - name: scaffold
"""


def _models(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for path in sorted((folder / "models").glob("*.safetensors")):
        for key, value in load_file(path).items():
            out[f"{path.name}/{key}"] = value
    return out


def test_simulate_on_an_existing_cluster_writes_the_in_process_study(
    ray_instance: str, tmp_path: Path
) -> None:
    """`fedcare simulate --backend ray --address`, as typed after `ray start --head`: a new
    driver joins the running cluster, and the study's models are the in-process ones."""
    config = tmp_path / "study.yaml"
    config.write_text(STUDY)
    here = CliRunner().invoke(app, ["simulate", str(config), "--out", str(tmp_path / "here")])
    assert here.exit_code == 0, here.output
    there = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedcare.cli.main",
            "simulate",
            str(config),
            "--out",
            str(tmp_path / "there"),
            "--backend",
            "ray",
            "--address",
            ray_instance,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert there.returncode == 0, there.stdout + there.stderr
    assert f"rounds on the Ray cluster at {ray_instance}" in there.stdout
    expected, found = _models(tmp_path / "here"), _models(tmp_path / "there")
    assert sorted(found) == sorted(expected)  # local baseline, fedavg and scaffold, 2 seeds
    for key, value in expected.items():
        assert np.max(np.abs(found[key] - value)) <= 1e-6, key
    assert ray.is_initialized()  # the study's driver left the cluster running
