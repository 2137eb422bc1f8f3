"""Secure aggregation (Bonawitz et al. 2017; SecAgg+ neighbourhoods of Bell et al. 2020).

The server learns the sum of the sites' quantised vectors and nothing else about any
single one, even when up to n - threshold sites drop out at any stage. Both halves are
sans-IO state machines; :func:`simulate` drives them in process. A site may start before
its vector exists (``SecAggClient(config, id, None)``): keys, shares and its whole mask
are input-independent, so only ``provide_input(vector)`` is left once it has trained.

Scope: the semi-honest (honest-but-curious) setting. The consistency-check round with
signatures that Bonawitz et al. add against an actively malicious server is not
implemented; sender ids must be authenticated by the transport (mTLS).
"""

from fedcare.secagg.client import ClientState, SecAggClient
from fedcare.secagg.config import SecAggConfig
from fedcare.secagg.graph import CommunicationGraph, secagg_plus_degree
from fedcare.secagg.messages import Stage
from fedcare.secagg.ring import FixedPointRing
from fedcare.secagg.server import AggregateResult, SecAggServer, ServerState
from fedcare.secagg.simulate import SimulationOutcome, simulate

__all__ = [
    "AggregateResult",
    "ClientState",
    "CommunicationGraph",
    "FixedPointRing",
    "SecAggClient",
    "SecAggConfig",
    "SecAggServer",
    "ServerState",
    "SimulationOutcome",
    "Stage",
    "secagg_plus_degree",
    "simulate",
]
