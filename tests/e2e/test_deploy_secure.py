"""Secure aggregation with distributed DP, deployed: four site processes over mTLS.

Every site clips its update, adds its share of the Gaussian noise and masks it; the
coordinator learns only the noised sum. One hospital's agent is killed (os._exit, like
kill -9) in the middle of a round's secure sum, after it shared its key shares and before
it sent its masked input: the others reveal what is needed to remove its masks and the
round completes with three sites.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedcare.net.store import RunStore
from fedcare.net.tls import TlsBundle
from fedcare.runtime.audit import compare, verify
from tests.e2e import test_deploy
from tests.e2e.test_deploy import SITES, Deployment

pytestmark = pytest.mark.slow
deployment = test_deploy.deployment  # the study folder, CA and bundles fixture

SECURE_DP = (
    "  - name: fedavg\n"
    "    params:\n"
    "      secure: secure_aggregation\n"
    "      dp: {mode: distributed, noise_multiplier: 1.0, clip_norm: 0.5}\n"
)


@pytest.mark.parametrize("deployment", [3], indirect=True)
def test_secagg_with_distributed_dp_finishes_when_a_site_dies_mid_sum(
    deployment: Deployment,
) -> None:
    dep = deployment
    dep.study.write_text(dep.study.read_text().replace("  - name: fedavg\n", SECURE_DP))
    dep.approve_everywhere()
    coordinator, port = dep.coordinator(
        "--run-id", "secure-run", "--start-grace", "120", "--round-timeout", "60"
    )
    for site in SITES[:3]:
        dep.site(site, port)
    crash_round = 1
    crashing = dep.crashing_site("va", port, crash_round, "forwarded_shares")
    assert crashing.wait(timeout=120) == 9
    assert "crashing on forwarded_shares of round 2" in dep.log("va").read_text()
    dep.site("va", port)  # the hospital restarts its agent; it rejoins the next round
    assert coordinator.wait(timeout=180) == 0, dep.log("coordinator").read_text()

    with RunStore.in_folder(dep.out) as store:
        rounds = {r.round: r for r in store.rounds("secure-run")}
        assert all(r.status == "finished" for r in rounds.values())
        assert sorted(rounds[0].by_status("contributed")) == sorted(SITES)
        assert sorted(rounds[crash_round].by_status("contributed")) == sorted(SITES[:3])
        assert "va" in rounds[crash_round].by_status("dropped")
        assert sorted(rounds[crash_round + 1].by_status("contributed")) == sorted(SITES)
    result = json.loads((dep.out / "deploy" / "secure-run" / "result.json").read_text())
    epsilons = [r["epsilon"] for r in result["history"]]
    assert len(epsilons) == 3 and 0 < epsilons[0] < epsilons[1] < epsilons[2]
    keys = {"coordinator": TlsBundle.load(dep.root / "bundles/coordinator").signing_public_key()}
    report = verify(dep.out / "audit.log", keys)
    assert report.ok, report.summary()
    # Each site's masked input is audited under its hash; the coordinator never saw more.
    log = dep.out / "audit.log"
    assert log.read_text().count('"kind":"update_accepted"') == 4 + 3 + 4

    # Every hospital kept a verified copy of the entries that concern it; an edit of the
    # coordinator's log after the fact shows against any copy that holds the entry.
    for site in SITES:
        copy = dep.root / "sites" / site / "audit-copy.log"
        assert verify(copy, keys, partial=True).ok
        assert compare(log, copy, site) == []
        assert f'"site":"{site}"' in copy.read_text()
    # The coordinator rewrites an entry about cleveland (new body, new hash): its own log
    # may be re-signed by whoever holds its key, but cleveland's copy still holds the original.
    lines = log.read_text().splitlines()
    edited = next(i for i, line in enumerate(lines) if '"site":"cleveland"' in line)
    entry = json.loads(lines[edited])
    entry["body"]["site"], entry["hash"] = "hungarian", "f" * 64
    lines[edited] = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    log.write_text("\n".join(lines) + "\n")
    problems = compare(log, dep.root / "sites" / "cleveland" / "audit-copy.log", "cleveland")
    assert [p.kind for p in problems] == ["differs"]
    assert problems[0].index == entry["index"]


@pytest.mark.parametrize("deployment", [2], indirect=True)
def test_ckks_study_over_mtls_with_the_hospitals_shared_key_set(deployment: Deployment) -> None:
    dep = deployment
    dep.study.write_text(
        dep.study.read_text().replace(
            "  - name: fedavg\n", "  - name: fedavg\n    params: {secure: encrypt}\n"
        )
    )
    dep.approve_everywhere()
    subprocess.run(
        [sys.executable, "-m", "fedcare.cli.main", "site", "he-keys", "create", "he.key"],
        cwd=dep.root,
        check=True,
        capture_output=True,
    )
    coordinator, port = dep.coordinator("--run-id", "ckks-run", "--start-grace", "120")
    for site in SITES:
        dep.site(site, port, "--he-keys", "he.key")
    assert coordinator.wait(timeout=180) == 0, dep.log("coordinator").read_text()
    with RunStore.in_folder(dep.out) as store:
        rounds = store.rounds("ckks-run")
        assert [sorted(r.by_status("contributed")) for r in rounds] == [sorted(SITES)] * 2
    for site in SITES:
        assert "CKKS key set" in dep.log(site).read_text()
    # The coordinator saw ciphertexts and one decrypted sum per round, never the key.
    assert "he.key" not in dep.log("coordinator").read_text()
