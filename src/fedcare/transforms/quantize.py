"""Stochastic uniform quantisation of a flat update to 8 or 4 bits per value.

The vector is cut into chunks (1024 values by default). Each chunk keeps its minimum and
a step ``scale = (max - min) / (2^bits - 1)`` as float32; each value x becomes a code c
with ``x ~ min + c * scale``, rounded down or up at random with the probabilities that
make the rounding unbiased (stochastic rounding, as in QSGD, Alistarh et al. 2017):

* unbiased: E[decode(encode(x))] = x for every coordinate;
* bounded: |x - decode(encode(x))| < scale of x's chunk, plus at most half a float32 ulp
  of the decoded value (the final cast back to float32);
* exact on constant chunks (scale 0).

Codes are packed tightly: one byte per value at 8 bits, two values per byte at 4 bits
(low nibble first). ``QuantizedVector.to_bytes`` is the wire format and ``nbytes`` its
exact length; the length, bits and chunk size are known to both ends from the job plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedcare.core.vectors import FloatVector

DEFAULT_CHUNK_SIZE = 1024
SUPPORTED_BITS = (4, 8)

Codes = npt.NDArray[np.uint8]


@dataclass(frozen=True, eq=False)
class QuantizedVector:
    """Packed codes plus per-chunk ``mins`` and ``scales`` of a vector of ``length`` values."""

    packed: Codes
    mins: npt.NDArray[np.float32]
    scales: npt.NDArray[np.float32]
    length: int
    bits: int
    chunk_size: int

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise ValueError(f"quantisation supports {SUPPORTED_BITS} bits, found {self.bits}")
        if self.length < 0 or self.chunk_size < 1:
            raise ValueError(
                f"bad quantised vector header: length {self.length}, chunk size {self.chunk_size}"
            )
        chunks = -(-self.length // self.chunk_size)
        expected = _packed_size(self.length, self.bits)
        if self.packed.dtype != np.uint8 or self.packed.shape != (expected,):
            raise ValueError(
                f"quantised vector of {self.length} values at {self.bits} bits needs {expected} "
                f"packed uint8 bytes, found {self.packed.dtype} of shape {self.packed.shape}"
            )
        for name, arr in (("mins", self.mins), ("scales", self.scales)):
            if arr.dtype != np.float32 or arr.shape != (chunks,):
                raise ValueError(
                    f"quantised vector needs {chunks} float32 {name} (one per chunk of "
                    f"{self.chunk_size}), found {arr.dtype} of shape {arr.shape}"
                )
        if not (np.isfinite(self.mins).all() and np.isfinite(self.scales).all()):
            raise ValueError("quantised vector has non-finite chunk minimums or scales")
        if np.any(self.scales < 0):
            raise ValueError("quantised vector has negative chunk scales")

    @property
    def nbytes(self) -> int:
        """Exact size on the wire: ``len(self.to_bytes())``."""
        return self.mins.nbytes + self.scales.nbytes + self.packed.nbytes

    def to_bytes(self) -> bytes:
        """Chunk minimums, chunk steps, packed codes (little-endian).

        Length, bits and chunk size are not repeated: both ends know them from the job
        plan (the stage's settings) and the model layout.
        """
        return b"".join(
            (
                self.mins.astype("<f4").tobytes(),
                self.scales.astype("<f4").tobytes(),
                self.packed.tobytes(),
            )
        )

    @classmethod
    def from_bytes(
        cls, data: bytes, *, length: int, bits: int = 8, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> QuantizedVector:
        if chunk_size < 1 or bits not in SUPPORTED_BITS or length < 0:
            raise ValueError(
                f"bad quantised vector settings: length {length}, chunk size {chunk_size}, bits {bits}"
            )
        chunks = -(-length // chunk_size)
        expected = 8 * chunks + _packed_size(length, bits)
        if len(data) != expected:
            raise ValueError(
                f"quantised vector of {length} values at {bits} bits is {expected} bytes, "
                f"found {len(data)}"
            )
        body = memoryview(data)
        return cls(
            packed=np.frombuffer(body[8 * chunks :], dtype=np.uint8).copy(),
            mins=np.frombuffer(body[: 4 * chunks], dtype="<f4").astype(np.float32),
            scales=np.frombuffer(body[4 * chunks : 8 * chunks], dtype="<f4").astype(np.float32),
            length=length,
            bits=bits,
            chunk_size=chunk_size,
        )


def _packed_size(length: int, bits: int) -> int:
    return length if bits == 8 else (length + 1) // 2


def _chunked(values: npt.NDArray[np.float32], chunk_size: int) -> npt.NDArray[np.float32]:
    """(chunks, chunk_size) view, the tail padded with its own last value (min/max unchanged)."""
    pad = -values.size % chunk_size
    if pad:
        values = np.concatenate([values, np.full(pad, values[-1], dtype=values.dtype)])
    return values.reshape(-1, chunk_size)


def _chunk_scales(
    mins: npt.NDArray[np.float32], maxs: npt.NDArray[np.float32], levels: int
) -> npt.NDArray[np.float32]:
    """float32 steps with min + levels * scale >= max, so no code has to be clipped."""
    span = maxs.astype(np.float64) - mins.astype(np.float64)
    scales = (span / levels).astype(np.float32)
    short = mins.astype(np.float64) + levels * scales.astype(np.float64) < maxs
    scales[short] = np.nextafter(scales[short], np.float32(np.inf))
    return scales


def encode(
    vector: npt.ArrayLike,
    rng: np.random.Generator,
    *,
    bits: int = 8,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> QuantizedVector:
    """Quantise a flat float vector to ``bits`` bits per value with stochastic rounding."""
    x = np.asarray(vector)
    if x.ndim != 1 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"quantisation needs a flat float vector, found {x.dtype} {x.shape}")
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"quantisation supports {SUPPORTED_BITS} bits, found {bits}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk size must be a positive integer, found {chunk_size!r}")
    x32 = x.astype(np.float32, copy=False)
    if not np.isfinite(x32).all():
        raise ValueError("cannot quantise a vector with NaN or inf values")
    length = x32.size
    levels = (1 << bits) - 1
    if length == 0:
        empty = np.zeros(0, dtype=np.float32)
        return QuantizedVector(np.zeros(0, np.uint8), empty, empty.copy(), 0, bits, chunk_size)
    chunks = _chunked(x32, chunk_size)
    mins = chunks.min(axis=1)
    scales = _chunk_scales(mins, chunks.max(axis=1), levels)
    safe = np.where(scales > 0, scales, 1.0).astype(np.float64)[:, None]
    # t in [0, levels]; clip only guards float64 rounding at the very top of the range.
    t = np.clip((chunks - mins[:, None].astype(np.float64)) / safe, 0.0, levels)
    t[scales == 0] = 0.0
    low = np.floor(t)
    up = rng.random(t.shape) < (t - low)
    codes = (low + up).astype(np.uint8).reshape(-1)[:length]
    return QuantizedVector(_pack(codes, bits), mins, scales, length, bits, chunk_size)


def decode(q: QuantizedVector) -> FloatVector:
    """min + code * scale per chunk, computed in float64 and returned as float32."""
    if q.length == 0:
        return np.zeros(0, dtype=np.float32)
    codes = _unpack(q.packed, q.bits, q.length)
    pad = -q.length % q.chunk_size
    if pad:
        codes = np.concatenate([codes, np.zeros(pad, dtype=np.uint8)])
    grid = codes.reshape(-1, q.chunk_size).astype(np.float64)
    values = q.mins[:, None].astype(np.float64) + grid * q.scales[:, None].astype(np.float64)
    out: FloatVector = values.reshape(-1)[: q.length].astype(np.float32)
    return out


def _pack(codes: Codes, bits: int) -> Codes:
    if bits == 8:
        return codes
    if codes.size % 2:
        codes = np.concatenate([codes, np.zeros(1, dtype=np.uint8)])
    packed: Codes = codes[0::2] | (codes[1::2] << np.uint8(4))
    return packed


def _unpack(packed: Codes, bits: int, length: int) -> Codes:
    if bits == 8:
        return packed
    codes = np.empty(2 * packed.size, dtype=np.uint8)
    codes[0::2] = packed & 0x0F
    codes[1::2] = packed >> np.uint8(4)
    return codes[:length]
