"""Lossless conversion between a torch module's state and fedcare's flat vector + layout."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fedcare.core.errors import LayoutMismatchError
from fedcare.core.vectors import FloatVector, ParamLayout, TensorSpec

_TORCH_TO_NAME = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.int64: "int64",
    torch.int32: "int32",
    torch.int16: "int16",
    torch.int8: "int8",
    torch.uint8: "uint8",
    torch.bool: "bool",
}
_NAME_TO_TORCH = {v: k for k, v in _TORCH_TO_NAME.items()}


def layout_of(module: nn.Module) -> ParamLayout:
    """Layout of the whole state dict; parameters that require grad are trainable."""
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    specs = []
    for name, tensor in module.state_dict().items():
        dtype = _TORCH_TO_NAME.get(tensor.dtype)
        if dtype is None:
            raise LayoutMismatchError(
                f"tensor '{name}' has dtype {tensor.dtype}, which fedcare cannot move as float32 "
                "without loss; convert the model to float32 first (model.float())"
            )
        specs.append(
            TensorSpec(
                name=name, shape=tuple(tensor.shape), dtype=dtype, trainable=name in trainable
            )
        )
    return ParamLayout(tuple(specs))


def state_dict_to_vector(state: Mapping[str, torch.Tensor], layout: ParamLayout) -> FloatVector:
    """Flatten a state dict into one float32 vector in layout order."""
    missing = [n for n in layout.names if n not in state]
    if missing:
        raise LayoutMismatchError(f"state dict lacks tensors {missing} required by the layout")
    out = torch.empty(layout.size, dtype=torch.float32)
    for spec, start, stop in layout.offsets():
        tensor = state[spec.name].detach()
        if tuple(tensor.shape) != spec.shape:
            raise LayoutMismatchError(
                f"tensor '{spec.name}': expected shape {spec.shape}, found {tuple(tensor.shape)}"
            )
        out[start:stop] = tensor.reshape(-1).to(torch.float32)
    return out.numpy()


def vector_to_state_dict(vector: FloatVector, layout: ParamLayout) -> dict[str, torch.Tensor]:
    """Rebuild a state dict with each tensor's original dtype and shape."""
    # np.require copies only read-only inputs (e.g. broadcast views); torch needs writable memory.
    vec = torch.from_numpy(np.require(layout.check_vector(vector), requirements=["C", "W"]))
    state: dict[str, torch.Tensor] = {}
    for spec, start, stop in layout.offsets():
        state[spec.name] = (
            vec[start:stop].reshape(spec.shape).to(_NAME_TO_TORCH[spec.dtype]).clone()
        )
    return state


def module_to_vector(module: nn.Module, layout: ParamLayout | None = None) -> FloatVector:
    return state_dict_to_vector(module.state_dict(), layout or layout_of(module))


def load_vector(module: nn.Module, vector: FloatVector, layout: ParamLayout | None = None) -> None:
    """Write a flat vector into a module in place (strict: every tensor must match)."""
    module.load_state_dict(vector_to_state_dict(vector, layout or layout_of(module)), strict=True)


def has_buffers(module: nn.Module) -> bool:
    """Modules with buffers (batch-norm statistics) cannot be trained under vmap."""
    return any(True for _ in module.buffers())


_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def local_tensor_mask(module: nn.Module, layout: ParamLayout, kind: str) -> npt.NDArray[np.bool_]:
    """Entries of the flat vector that stay at each site under a personalisation scheme.

    ``head`` (FedPer): the last linear layer. ``norm`` (FedBN): every normalisation layer,
    its affine parameters and its running statistics.
    """
    if kind == "head":
        linears = [name for name, m in module.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise LayoutMismatchError(
                f"{type(module).__name__} has no linear layer to keep as a personal head"
            )
        prefixes = [linears[-1]]
    elif kind == "norm":
        prefixes = [name for name, m in module.named_modules() if isinstance(m, _NORM_TYPES)]
        if not prefixes:
            raise LayoutMismatchError(
                f"{type(module).__name__} has no normalisation layer for FedBN; use a model with norm: true"
            )
    else:
        raise ValueError(f"unknown local tensor kind '{kind}'; expected 'head' or 'norm'")
    mask = np.zeros(layout.size, dtype=bool)
    for spec, start, stop in layout.offsets():
        if any(spec.name.startswith(f"{p}.") for p in prefixes):
            mask[start:stop] = True
    return mask
