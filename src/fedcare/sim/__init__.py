"""The in-process simulator: many sites on one machine, no serialisation."""

from fedcare.sim.engine import FederatedSimulation, IsolatedTraining, RoundRecord, RunResult

__all__ = ["FederatedSimulation", "IsolatedTraining", "RoundRecord", "RunResult"]
