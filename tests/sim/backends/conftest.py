"""A real local Ray instance, started once per test session and shut down at its end.

Two CPUs, no dashboard: what a 2-core CI machine has. Backends created while it runs join
it (and leave it running), as a study does that finds Ray already initialised.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def ray_instance() -> Iterator[str]:
    """The local instance's GCS address (what ``--address`` takes to join it)."""
    import ray

    context = ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield str(context.address_info["gcs_address"])
    finally:
        ray.shutdown()
