"""Parameters as one flat float32 vector plus a layout.

Every update transform, aggregator and transport works on the flat vector; the layout
(names, shapes, dtypes) is what turns it back into a model's state. Conversion to and
from torch lives in :mod:`fedcare.ml.torch_adapter`; this module is numpy only.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import LayoutMismatchError

FloatVector = npt.NDArray[np.float32]

# dtypes that survive a round trip through float32 exactly (integers up to 2**24).
_LOSSLESS_DTYPES = {
    "float32",
    "float16",
    "bfloat16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
}


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor inside a flat vector."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    trainable: bool = True

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class ParamLayout:
    """Ordered tensor specs; offsets into the flat vector follow the order."""

    specs: tuple[TensorSpec, ...]

    def __post_init__(self) -> None:
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise LayoutMismatchError(f"layout has duplicate tensor names: {dup}")
        for spec in self.specs:
            if spec.dtype not in _LOSSLESS_DTYPES:
                raise LayoutMismatchError(
                    f"tensor '{spec.name}' has dtype {spec.dtype}; fedcare moves parameters as "
                    f"float32 and only accepts dtypes that convert losslessly "
                    f"({', '.join(sorted(_LOSSLESS_DTYPES))})"
                )

    @property
    def size(self) -> int:
        return sum(s.size for s in self.specs)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    def offsets(self) -> Iterator[tuple[TensorSpec, int, int]]:
        """Yield ``(spec, start, stop)`` for each tensor in order."""
        start = 0
        for spec in self.specs:
            stop = start + spec.size
            yield spec, start, stop
            start = stop

    def slice_of(self, name: str) -> slice:
        for spec, start, stop in self.offsets():
            if spec.name == name:
                return slice(start, stop)
        raise LayoutMismatchError(f"layout has no tensor named '{name}'; it has {list(self.names)}")

    def mask(self, predicate: str = "trainable") -> npt.NDArray[np.bool_]:
        """Boolean mask over the flat vector: True where the tensor is trainable."""
        out = np.zeros(self.size, dtype=bool)
        for spec, start, stop in self.offsets():
            if predicate == "trainable":
                out[start:stop] = spec.trainable
            else:
                raise ValueError(f"unknown mask predicate '{predicate}'")
        return out

    def flatten(self, arrays: Mapping[str, npt.ArrayLike]) -> FloatVector:
        """Concatenate named arrays into one float32 vector in layout order."""
        missing = [n for n in self.names if n not in arrays]
        extra = [n for n in arrays if n not in set(self.names)]
        if missing or extra:
            raise LayoutMismatchError(
                f"arrays do not match the layout: missing {missing}, unexpected {extra}"
            )
        out = np.empty(self.size, dtype=np.float32)
        for spec, start, stop in self.offsets():
            arr = np.asarray(arrays[spec.name])
            if tuple(arr.shape) != spec.shape:
                raise LayoutMismatchError(
                    f"tensor '{spec.name}': expected shape {spec.shape}, found {tuple(arr.shape)}"
                )
            out[start:stop] = arr.reshape(-1)
        return out

    def unflatten(self, vector: npt.ArrayLike) -> dict[str, npt.NDArray[np.generic]]:
        """Split a flat vector into named arrays (views where the dtype is float32)."""
        vec = self.check_vector(vector)
        out: dict[str, npt.NDArray[np.generic]] = {}
        for spec, start, stop in self.offsets():
            piece = vec[start:stop].reshape(spec.shape)
            if spec.dtype in ("float32", "bfloat16"):
                out[spec.name] = piece
            else:
                out[spec.name] = piece.astype(_numpy_dtype(spec.dtype))
        return out

    def check_vector(self, vector: npt.ArrayLike, *, what: str = "vector") -> FloatVector:
        """Return ``vector`` as a 1-D float32 array or raise if it does not fit."""
        vec = np.asarray(vector)
        if vec.ndim != 1 or vec.shape[0] != self.size:
            raise LayoutMismatchError(
                f"{what}: expected a flat vector of {self.size} values, found shape {vec.shape}"
            )
        if vec.dtype != np.float32:
            raise LayoutMismatchError(f"{what}: expected dtype float32, found {vec.dtype}")
        return vec

    def zeros(self) -> FloatVector:
        return np.zeros(self.size, dtype=np.float32)

    def to_json(self) -> str:
        return json.dumps(
            [
                {"name": s.name, "shape": list(s.shape), "dtype": s.dtype, "trainable": s.trainable}
                for s in self.specs
            ]
        )

    @classmethod
    def from_json(cls, text: str) -> ParamLayout:
        raw = json.loads(text)
        if not isinstance(raw, list):
            raise LayoutMismatchError("layout JSON must be a list of tensor specs")
        specs = []
        for i, item in enumerate(raw):
            try:
                specs.append(
                    TensorSpec(
                        name=str(item["name"]),
                        shape=tuple(int(d) for d in item["shape"]),
                        dtype=str(item.get("dtype", "float32")),
                        trainable=bool(item.get("trainable", True)),
                    )
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise LayoutMismatchError(f"layout JSON entry {i} is malformed: {exc}") from exc
        return cls(tuple(specs))

    def fingerprint(self) -> str:
        """Short content hash: two sites with the same fingerprint share an architecture."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def _numpy_dtype(name: str) -> np.dtype[np.generic]:
    if name == "bool":
        return np.dtype(np.bool_)
    return np.dtype(name)
