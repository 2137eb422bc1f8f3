"""A plug-in whose spec is malformed: its parameter has no default (importing it fails)."""

from pydantic import BaseModel

from fedcare.algorithms.fedavg import fedavg_client
from fedcare.algorithms.spec import AlgorithmSpec


class NeedsValue(BaseModel):
    strength: float


SPEC = AlgorithmSpec(name="fedbroken", client=fedavg_client, params=NeedsValue)
