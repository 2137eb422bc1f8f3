"""A real site process that dies (os._exit, like kill -9) in a given round.

python tests/e2e/crashing_site.py HOST:PORT BUNDLE STATE_DIR DATASET:SITE CRASH_ROUND [STEP]

Without STEP it dies when asked to train that round; with a secure-aggregation STEP (e.g.
``forwarded_shares``) it dies on receiving that message of the round's secure sum.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from fedcare.cli.deploy import _site_data
from fedcare.net.site_agent import SiteAgent
from fedcare.net.site_training import site_training
from fedcare.net.tls import TlsBundle
from fedcare.runtime.approvals import ApprovalStore
from fedcare.runtime.site import SiteMachine


def main() -> None:
    target, bundle_dir, state, data, crash_round = sys.argv[1:6]
    step = sys.argv[6] if len(sys.argv) > 6 else ""
    bundle = TlsBundle.load(Path(bundle_dir))
    rows, check = _site_data(data)

    def work(plan):  # type: ignore[no-untyped-def]
        real = site_training(rows)(plan)
        train = real.train

        def crash_on(task):  # type: ignore[no-untyped-def]
            if task.round == int(crash_round) and not step:
                print(f"crashing while training round {task.round + 1}", flush=True)
                os._exit(9)
            return train(task)

        real.train = crash_on  # type: ignore[method-assign]
        return real

    approvals = ApprovalStore(Path(state) / "approvals.json")
    machine = SiteMachine(bundle.name, approvals, check, work, coordinator="coordinator")
    handle = machine.handle

    def crash_in_secure_sum(env, now):  # type: ignore[no-untyped-def]
        if env.kind == "secagg" and env.round == int(crash_round) and env.header["step"] == step:
            print(f"crashing on {step} of round {env.round + 1}", flush=True)
            os._exit(9)
        return handle(env, now)

    machine.handle = crash_in_secure_sum  # type: ignore[method-assign]
    SiteAgent(machine, target, bundle=bundle, state_dir=Path(state)).run()


if __name__ == "__main__":
    main()
