"""A rogue (valid certificate, not in the plan) and a greedy site (in the plan, declares a
message and stalls) cannot stall a round of honest sites: over real gRPC with mTLS, the
heart study's coordinator driver in this process and three honest site agents."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from fedcare.cli.deploy import initial_model, plan_and_facts
from fedcare.core.errors import ProtocolError
from fedcare.data.registry import load_dataset
from fedcare.net.admission import FRAMING_BYTES, ckks_bytes, max_message_bytes
from fedcare.net.channel import CONNECT, Link, StreamRefusedError, TransportLimits
from fedcare.net.coordinator_server import RunOutcome, Security, new_run, serve
from fedcare.net.serde import wire_frames
from fedcare.net.site_agent import SiteAgent
from fedcare.net.site_training import site_training
from fedcare.net.store import RunStore
from fedcare.net.tls import TlsBundle, init_study_ca, issue_bundle
from fedcare.runtime.approvals import ApprovalStore
from fedcare.runtime.coordinator import CoordinatorOptions
from fedcare.runtime.envelope import Envelope
from fedcare.runtime.site import DataCheck, SiteMachine
from fedcare.study.config import parse_config
from tests.net.test_coordinator_driver import HEART as DRIVER_HEART

# The driver tests' heart study, where three honest sites are enough for a round.
HEART = {**DRIVER_HEART, "name": "heart-streams", "participation": {"min_sites": 3}}
HONEST = ("cleveland", "hungarian", "switzerland")


def test_the_bound_follows_the_model_its_extras_and_encryption() -> None:
    plain = max_message_bytes(1_000_000, {}, 2, encrypted=False)
    assert plain == FRAMING_BYTES + 8_000_000
    assert max_message_bytes(1_000_000, {"control": 1_000_000}, 2, encrypted=False) == (
        FRAMING_BYTES + 16_000_000
    )
    # Ciphertexts are bigger than the floats they hold, but still bounded by the model.
    encrypted = max_message_bytes(1_000_000, {}, 2, encrypted=True)
    assert plain < encrypted == FRAMING_BYTES + ckks_bytes(1_000_001) < 8 << 30
    # A tiny model still leaves room for its evaluation counts (4096-bin histograms).
    assert 200_000 < max_message_bytes(14, {}, 2, encrypted=False) < 1 << 20


def test_a_site_not_in_the_plan_is_refused_before_its_stream_starts(tmp_path: Path) -> None:
    driver = _driver(tmp_path, Security(None))
    with pytest.raises(StreamRefusedError, match=r"'mallory' is not in the plan of run 'r1'"):
        driver.connected(Link("mallory", None, "10.0.0.9:4242"))
    assert "mallory" not in driver.links and "mallory" not in driver.machine.sites
    (event,) = [e for e in driver.store.events("r1") if e.kind == "stream_refused"]
    assert event.site == "mallory"
    driver.store.close()


def _driver(folder: Path, security: Security, options: CoordinatorOptions | None = None) -> Any:
    config = parse_config(HEART)
    plan, _, _ = plan_and_facts(config, None, None, None, None)
    return new_run(folder, "r1", plan, initial_model(plan), security, options, log=lambda _: None)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TlsBundle]:
    root = tmp_path_factory.mktemp("admission")
    ca = init_study_ca(root / "ca", "heart")
    out = {"coordinator": issue_bundle(ca, "coordinator", root / "coordinator", "coordinator")}
    for name in (*HONEST, "va", "mallory"):  # mallory: a valid certificate, not in the plan
        out[name] = issue_bundle(ca, name, root / name, "site")
    return {name: TlsBundle.load(path) for name, path in out.items()}


def _raw_call(bundle: TlsBundle, port: int, frames: Iterator[bytes]) -> Any:
    creds = grpc.ssl_channel_credentials(bundle.ca_pem, bundle.key_pem, bundle.cert_pem)
    channel = grpc.secure_channel(f"127.0.0.1:{port}", creds)
    return channel, channel.stream_stream(CONNECT)(frames)


def _declare_and_stall(
    run_id: str, values: int, sent: threading.Event, stop: threading.Event
) -> Iterator[bytes]:
    """A message head and its first chunk, then nothing more (the stream stays open)."""
    env = Envelope.create("update", run_id, 0, {}, np.zeros(values, np.float32))
    frames = wire_frames(env, 64 << 10)
    yield next(frames)
    yield next(frames)
    sent.set()
    stop.wait()


def test_a_rogue_and_a_greedy_site_cannot_stall_the_honest_sites(
    tmp_path: Path, bundles: dict[str, TlsBundle]
) -> None:
    options = CoordinatorOptions(start_grace_s=0.5, round_timeout_s=120.0)
    driver = _driver(tmp_path / "study", Security(bundles["coordinator"]), options)
    bound = driver.max_message_bytes
    # The whole in-flight budget is one legitimate message: whoever holds it blocks the
    # others, until its hold deadline (a second here) cuts it.
    limits = TransportLimits(chunk_bytes=64 << 10, inflight_bytes=bound, hold_s=1.0)
    port_box: list[int] = []
    ready = threading.Event()
    outcome: list[RunOutcome] = []

    def coordinator() -> None:
        outcome.append(
            serve(
                driver,
                "127.0.0.1:0",
                limits=limits,
                ready=lambda p: (port_box.append(p), ready.set()),  # type: ignore[func-returns-value]
            )
        )

    serving = threading.Thread(target=coordinator, daemon=True)
    serving.start()
    assert ready.wait(30)
    port = port_box[0]
    stall = threading.Event()

    # The rogue announces 8 GiB: refused at connect, before a byte of it is buffered.
    rogue_sent = threading.Event()
    channel, rogue = _raw_call(
        bundles["mallory"], port, _declare_and_stall("r1", (8 << 30) // 4, rogue_sent, stall)
    )
    with pytest.raises(grpc.RpcError) as refused:
        next(rogue)
    channel.close()
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert "'mallory' is not in the plan" in refused.value.details()  # type: ignore[attr-defined]

    # The greedy site is in the plan: it declares the largest message the plan allows,
    # sends one chunk of it and holds the stream.
    greedy_sent = threading.Event()
    values = (bound - FRAMING_BYTES) // 4
    channel, greedy = _raw_call(
        bundles["va"], port, _declare_and_stall("r1", values, greedy_sent, stall)
    )
    assert greedy_sent.wait(30)

    agents = []
    for data in load_dataset("heart-disease").sites:
        if data.name not in HONEST:
            continue
        state = tmp_path / "sites" / data.name
        approvals = ApprovalStore(state / "approvals.json")
        approvals.approve(driver.machine.plan_hash, by="owner")
        check = DataCheck(True, {"num_train": data.num_train}, [])
        machine = SiteMachine(
            data.name, approvals, check, site_training(data, threads=1), coordinator="coordinator"
        )
        agent = SiteAgent(
            machine, f"127.0.0.1:{port}", bundle=bundles[data.name], state_dir=state,
            limits=limits, log=lambda _: None,
        )  # fmt: skip
        thread = threading.Thread(target=agent.run, daemon=True)
        thread.start()
        agents.append(thread)
    for thread in agents:
        thread.join(120)
    with pytest.raises(grpc.RpcError) as cut:
        next(greedy)
    stall.set()
    channel.close()

    serving.join(30)
    (result,) = outcome
    assert result.status == "finished" and result.rounds == 2
    assert [sorted(r["participants"]) for r in result.history] == [sorted(HONEST)] * 2
    assert cut.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert "held its share of the coordinator's in-flight budget" in cut.value.details()  # type: ignore[attr-defined]
    store = RunStore.in_folder(tmp_path / "study")
    refusals = [e.site for e in store.events("r1") if e.kind == "stream_refused"]
    store.close()
    assert refusals == ["mallory"]


def test_a_site_in_the_plan_cannot_declare_more_than_the_plan_allows(tmp_path: Path) -> None:
    driver = _driver(tmp_path, Security(None))
    link = Link("va", None)
    from fedcare.net.serde import VectorHead

    env = Envelope.create("update", "r1", 0)
    big = VectorHead(env, np.dtype("<f4"), (driver.max_message_bytes // 4) + 1)
    with pytest.raises(ProtocolError, match=r"announced a 'update' message of \d+ bytes; the plan"):
        driver.admit(link, big)
    driver.admit(link, VectorHead(env, np.dtype("<f4"), 14))  # a real update passes
    driver.store.close()
