"""The upload pipeline: stages that encode a site's update and decode it at the coordinator.

Each stage encodes at the site and decodes at the coordinator, in reverse order
(pfl-research's postprocessors). The per-update stages are:

* ``clip``: scale the update to an L2 norm of at most ``max_norm`` (no bytes saved);
* ``quantize``: stochastic 8- or 4-bit quantisation (``bits``), unbiased;
* ``topk``: keep a ``fraction`` of the coordinates with error feedback (the residual of
  what was not sent stays at the site, in its state, and joins the next round's update).

Each stage declares what it keeps and needs (:mod:`fedcare.transforms.declared`); the
refusals of combinations that cannot work (two compression stages, clipping after
compression, compression under secure aggregation or encryption, ...) follow from those
declarations, with the declaring stage's reason.

In simulation the encoded objects pass by reference; ``nbytes`` is exactly what their
wire format (``to_bytes``) would move, so the bytes a study reports are real.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from fedcare.core.errors import ConfigError
from fedcare.core.records import SiteState
from fedcare.core.vectors import FloatVector
from fedcare.transforms import quantize, sparsify
from fedcare.transforms.clipping import l2_clip
from fedcare.transforms.declared import (
    COMPRESSION,
    COMPRESSION_LAST,
    Declared,
    aggregation_stage,
    check_declared,
    check_order,
)
from fedcare.transforms.secure import SECURE_KINDS, SecureSpec
from fedcare.transforms.sparsify import SparseVector, TopKCompressor

StageKind = Literal["clip", "quantize", "topk"]
# What each upload stage keeps, for the checks of what it may be combined with.
DECLARED: dict[str, Declared] = {
    "clip": Declared(name="clip", title="L2 clipping"),  # a dense, linear vector
    "quantize": Declared(
        name="quantize",
        title="stochastic quantisation",
        group=COMPRESSION,
        last=COMPRESSION_LAST,
        not_linear="each site picks its own grid (per-chunk minimum and step), and codes on "
        "different grids cannot be summed without decoding them one by one. Secure "
        "aggregation quantises into its ring itself; set its bits there.",
    ),
    "topk": Declared(
        name="topk",
        title="top-k sparsification",
        group=COMPRESSION,
        last=COMPRESSION_LAST,
        not_dense="sites keep different coordinates, and a masked or encrypted vector is "
        "dense, so nothing would be saved and the sparse indices would reveal what each "
        "site kept",
    ),
}
STAGE_KINDS: tuple[str, ...] = tuple(DECLARED)
SECURE_STAGES: tuple[str, ...] = SECURE_KINDS
COMPRESSION_STAGES: tuple[str, ...] = tuple(
    d.name for d in DECLARED.values() if d.group is COMPRESSION
)

# Site-state key of top-k's error-feedback residual (never uploaded).
TOPK_RESIDUAL = "__topk_residual__"

_PARAMS: dict[str, dict[str, type]] = {
    "clip": {"max_norm": float},
    "quantize": {"bits": int, "chunk_size": int},
    "topk": {"fraction": float, "error_feedback": bool},
}


@dataclass(frozen=True)
class Stage:
    kind: StageKind
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.kind}({inner})"

    @property
    def declared(self) -> Declared:
        return DECLARED[self.kind]


@dataclass(frozen=True)
class DenseVector:
    """An update sent as plain float32 values."""

    values: FloatVector

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes)


Encoded = DenseVector | quantize.QuantizedVector | SparseVector


def parse_stages(raw: Sequence[Mapping[str, Any]], *, where: str = "upload") -> tuple[Stage, ...]:
    """Stages from config dicts like ``{"stage": "quantize", "bits": 8}``; errors name the stage."""
    stages: list[Stage] = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or "stage" not in item:
            raise ConfigError(
                f"{where}[{i}]: each stage is a mapping with a 'stage' key, found {item!r}"
            )
        kind = str(item["stage"])
        if kind in SECURE_STAGES:
            raise ConfigError(
                f"{where}[{i}]: '{kind}' is configured in the study's privacy section, not as "
                f"an upload stage"
            )
        if kind not in _PARAMS:
            raise ConfigError(
                f"{where}[{i}]: unknown stage '{kind}'; known stages: {', '.join(STAGE_KINDS)}"
            )
        params = {k: v for k, v in item.items() if k != "stage"}
        unknown = sorted(set(params) - set(_PARAMS[kind]))
        if unknown:
            raise ConfigError(
                f"{where}[{i}] ({kind}): unknown parameter(s) {unknown}; allowed: {sorted(_PARAMS[kind])}"
            )
        stage = Stage(kind, params)  # type: ignore[arg-type]
        _check_stage(stage, f"{where}[{i}]")
        stages.append(stage)
    check_order([s.declared for s in stages], where=where)
    return tuple(stages)


def _check_stage(stage: Stage, where: str) -> None:
    p = stage.params
    if stage.kind == "clip":
        if "max_norm" not in p or not float(p["max_norm"]) > 0:
            raise ConfigError(f"{where} (clip): needs max_norm > 0, found {p.get('max_norm')!r}")
    elif stage.kind == "quantize":
        if int(p.get("bits", 8)) not in quantize.SUPPORTED_BITS:
            raise ConfigError(
                f"{where} (quantize): bits must be one of {quantize.SUPPORTED_BITS}, found {p.get('bits')!r}"
            )
        if int(p.get("chunk_size", quantize.DEFAULT_CHUNK_SIZE)) < 1:
            raise ConfigError(f"{where} (quantize): chunk_size must be >= 1")
    elif stage.kind == "topk":
        fraction = p.get("fraction")
        if fraction is None or not 0.0 < float(fraction) <= 1.0:
            raise ConfigError(f"{where} (topk): needs 0 < fraction <= 1, found {fraction!r}")


def check_combination(
    stages: Sequence[Stage], *, aggregator: str = "mean", secure: str | None = None
) -> None:
    """Refuse combinations of upload stages, a secure sum and an aggregation that cannot work,
    saying why (the declared-property check, without DP or an algorithm).

    ``secure`` is ``"secure_aggregation"``, ``"encrypt"`` or None.
    """
    hider = (SecureSpec(secure).declared,) if secure is not None else ()  # type: ignore[arg-type]
    check_declared([*(s.declared for s in stages), *hider, aggregation_stage(aggregator)])


@dataclass(frozen=True)
class UploadPipeline:
    """The per-update stages of one strategy, in order."""

    stages: tuple[Stage, ...] = ()

    @property
    def compresses(self) -> bool:
        return any(s.kind in COMPRESSION_STAGES for s in self.stages)

    def encode(
        self, vector: FloatVector, site_state: SiteState, rng: np.random.Generator
    ) -> tuple[Encoded, SiteState]:
        """(what the site sends, its new state) for one update."""
        out: FloatVector = np.asarray(vector, dtype=np.float32)
        state = site_state
        for stage in self.stages:
            p = stage.params
            if stage.kind == "clip":
                out = l2_clip(out, float(p["max_norm"])).vector
            elif stage.kind == "quantize":
                q = quantize.encode(
                    out,
                    rng,
                    bits=int(p.get("bits", 8)),
                    chunk_size=int(p.get("chunk_size", quantize.DEFAULT_CHUNK_SIZE)),
                )
                return q, state
            else:
                compressor = TopKCompressor(float(p["fraction"]))
                use_feedback = bool(p.get("error_feedback", True))
                residual = state.get(TOPK_RESIDUAL) if use_feedback else None
                if residual is not None and residual.shape != out.shape:
                    residual = None  # the shared part changed size (new layout): start afresh
                sent, new_residual = compressor.encode(out, residual)
                if use_feedback:
                    state = {**state, TOPK_RESIDUAL: new_residual}
                return sent, state
        return DenseVector(out), state

    @staticmethod
    def decode(encoded: Encoded) -> FloatVector:
        """The coordinator's view of the update."""
        if isinstance(encoded, DenseVector):
            return encoded.values
        if isinstance(encoded, quantize.QuantizedVector):
            return quantize.decode(encoded)
        return sparsify.decode(encoded)


def compression_stage(stages: Sequence[Stage]) -> Stage | None:
    """The pipeline's compression stage (it is always the last one), if any."""
    return stages[-1] if stages and stages[-1].kind in COMPRESSION_STAGES else None


def stage_dict(stage: Stage) -> dict[str, Any]:
    """A stage as the JSON a message header carries (the form :func:`parse_stages` reads)."""
    return {"stage": stage.kind, **dict(stage.params)}


def to_wire(encoded: Encoded) -> bytes:
    """The bytes a compressed update takes on the wire (``len == encoded.nbytes``)."""
    if isinstance(encoded, DenseVector):
        return encoded.values.astype("<f4").tobytes()
    return encoded.to_bytes()


def from_wire(data: bytes, stage: Stage, length: int) -> FloatVector:
    """Decode ``length`` values sent through ``stage`` (the coordinator knows both from the plan)."""
    p = stage.params
    if stage.kind == "quantize":
        q = quantize.QuantizedVector.from_bytes(
            data,
            length=length,
            bits=int(p.get("bits", 8)),
            chunk_size=int(p.get("chunk_size", quantize.DEFAULT_CHUNK_SIZE)),
        )
        return quantize.decode(q)
    if stage.kind == "topk":
        expected = 8 * TopKCompressor(float(p["fraction"])).k_for(length)
        if len(data) != expected:
            raise ValueError(
                f"top-k of {length} values keeps {expected // 8} of them ({expected} bytes), "
                f"found {len(data)} bytes"
            )
        return sparsify.decode(SparseVector.from_bytes(data, length=length))
    raise ValueError(f"stage '{stage.kind}' does not compress; nothing to decode")
