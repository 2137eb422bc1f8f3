"""The same workload as sim_speed.py in Flower's simulation engine (run_simulation, Ray,
one CPU per client). Runs inside .venv-flower (flwr[simulation]==1.41); prints one line
``FLOWER_RESULT {json}`` with the total wall time, the time spent in rounds (from the first
fit to the last aggregation) and the final accuracy of the global model.

``--npz FILE`` trains on the sites stored there instead (arrays ``x_train`` and ``y_train``
shaped sites x rows [x features], ``x_test``/``y_test`` likewise; ray_scale.py writes it),
so fedcare and Flower see the same rows; the MLP is features-64-64-1 either way.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _workload import make_workload
from plain_torch_loop import accuracy, mlp


def load_npz(
    path: Path,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[tuple[np.ndarray, np.ndarray]]]:
    """Per-site (x, y) train and test lists, as views into the stored arrays."""
    data = np.load(path)
    x, y, xt, yt = data["x_train"], data["y_train"], data["x_test"], data["y_test"]
    return [(x[k], y[k]) for k in range(len(x))], [(xt[k], yt[k]) for k in range(len(xt))]


def main() -> None:
    import flwr
    from flwr.client import ClientApp, NumPyClient
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation

    parser = argparse.ArgumentParser()
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--npz", type=Path, default=None, help="sites' rows (see above)")
    args = parser.parse_args()
    train, test = make_workload(args.sites) if args.npz is None else load_npz(args.npz)
    args.sites = len(train)
    features = train[0][0].shape[1]
    torch.manual_seed(0)
    init = [v.detach().numpy().copy() for v in mlp(features).state_dict().values()]
    marks: dict[str, float] = {}
    final: list[list[np.ndarray]] = []

    class SiteClient(NumPyClient):
        def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
            self.x = torch.from_numpy(np.array(x))
            self.y = torch.from_numpy(np.array(y)).float()
            self.model = mlp(features)

        def fit(self, parameters, config):  # type: ignore[no-untyped-def]
            keys = list(self.model.state_dict().keys())
            self.model.load_state_dict(
                {k: torch.from_numpy(v) for k, v in zip(keys, parameters, strict=False)}
            )
            opt = torch.optim.SGD(self.model.parameters(), lr=0.05)
            loss_fn = torch.nn.BCEWithLogitsLoss()
            perm = torch.randperm(len(self.y))
            for i in range(0, len(self.y), 32):
                rows = perm[i : i + 32]
                opt.zero_grad()
                loss_fn(self.model(self.x[rows])[:, 0], self.y[rows]).backward()
                opt.step()
            return [v.detach().numpy() for v in self.model.state_dict().values()], len(self.y), {}

    def client_fn(context: Context):  # type: ignore[no-untyped-def]
        k = int(context.node_config["partition-id"])
        return SiteClient(*train[k]).to_client()

    class TimedFedAvg(FedAvg):
        def configure_fit(self, server_round, parameters, client_manager):  # type: ignore[no-untyped-def]
            marks.setdefault("first_fit", time.perf_counter())
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):  # type: ignore[no-untyped-def]
            out = super().aggregate_fit(server_round, results, failures)
            marks["last_aggregate"] = time.perf_counter()
            if out[0] is not None:
                from flwr.common import parameters_to_ndarrays

                final[:] = [parameters_to_ndarrays(out[0])]
            return out

    def server_fn(context: Context) -> ServerAppComponents:
        strategy = TimedFedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=args.sites,
            min_available_clients=args.sites,
            initial_parameters=ndarrays_to_parameters(init),
        )
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=args.rounds))

    t0 = time.perf_counter()
    run_simulation(
        server_app=ServerApp(server_fn=server_fn),
        client_app=ClientApp(client_fn=client_fn),
        num_supernodes=args.sites,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    total = time.perf_counter() - t0
    model = mlp(features)
    keys = list(model.state_dict().keys())
    model.load_state_dict({k: torch.from_numpy(v) for k, v in zip(keys, final[0], strict=True)})
    result = {
        "version": flwr.__version__,
        "seconds_total": total,
        "seconds_rounds": marks["last_aggregate"] - marks["first_fit"],
        "accuracy": accuracy(model, test),
    }
    print("FLOWER_RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
