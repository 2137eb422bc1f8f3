"""The reference: a plain sequential PyTorch FedAvg loop, as a researcher would write it."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def mlp(features: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
    )


def plain_fedavg(
    train: list[tuple[np.ndarray, np.ndarray]],
    rounds: int,
    lr: float = 0.05,
    batch_size: int = 32,
    seed: int = 0,
) -> nn.Module:
    """Each round: every site loads the global weights, runs one epoch of SGD, and the
    server averages the state dicts weighted by site size."""
    torch.manual_seed(seed)
    features = train[0][0].shape[1]
    global_model = mlp(features)
    local = mlp(features)
    loss_fn = nn.BCEWithLogitsLoss()
    tensors = [(torch.from_numpy(x), torch.from_numpy(y).float()) for x, y in train]
    total = sum(len(y) for _, y in train)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(rounds):
        global_state = {k: v.clone() for k, v in global_model.state_dict().items()}
        summed = {k: torch.zeros_like(v) for k, v in global_state.items()}
        for x, y in tensors:
            local.load_state_dict(global_state)
            opt = torch.optim.SGD(local.parameters(), lr=lr)
            perm = torch.randperm(len(y), generator=gen)
            for i in range(0, len(y), batch_size):
                rows = perm[i : i + batch_size]
                opt.zero_grad()
                loss = loss_fn(local(x[rows])[:, 0], y[rows])
                loss.backward()
                opt.step()
            weight = len(y) / total
            for k, v in local.state_dict().items():
                summed[k] += weight * v
        global_model.load_state_dict(summed)
    return global_model


@torch.no_grad()
def accuracy(model: nn.Module, test: list[tuple[np.ndarray, np.ndarray]]) -> float:
    x = torch.from_numpy(np.concatenate([t[0] for t in test]))
    y = np.concatenate([t[1] for t in test])
    pred = (model(x)[:, 0] > 0).numpy().astype(np.int64)
    return float((pred == y).mean())
