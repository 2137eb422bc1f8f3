"""Fixed-point quantisation of float32 vectors into the ring Z_{2**32}, and back.

A value v is clipped to [-clip, clip] and mapped to round(v * scale) mod 2**32 (two's
complement). Masks are uniform in the ring, so masked values wrap freely; only the final
sum is decoded, as a signed 32-bit integer. That decode is exact as long as
``|sum| <= max_clients * round(clip * scale) < 2**31``; the constructor checks this
bound and raises ConfigError when a configuration could overflow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import ConfigError, UpdateRejectedError
from fedcare.secagg.crypto import RingVector

RING_BITS = 32
_SIGNED_LIMIT = 2 ** (RING_BITS - 1) - 1
_FLOAT32_BELOW_2_31 = 2**31 - 128  # the largest float32 below 2**31


@dataclass(frozen=True)
class FixedPointRing:
    """Quantiser for sums of up to ``max_clients`` vectors with entries in [-clip, clip].

    ``scale`` defaults to the largest power of two that cannot overflow; a power of two
    keeps ``v * scale`` and the inverse exact in float64.
    """

    clip: float
    max_clients: int
    scale: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(f"secagg clip must be a positive finite number, found {self.clip}")
        if self.max_clients < 1:
            raise ConfigError(f"secagg max_clients must be at least 1, found {self.max_clients}")
        if self.scale is None:
            exponent = math.floor(math.log2(_SIGNED_LIMIT / (self.max_clients * self.clip)))
            scale = 2.0**exponent
            # Rounding can add half a step per client; step down once if that tips it over.
            if self._bound(scale) > _SIGNED_LIMIT:
                scale /= 2
            object.__setattr__(self, "scale", scale)
        if not (math.isfinite(self.factor) and self.factor > 0):
            raise ConfigError(f"secagg scale must be positive and finite, found {self.scale}")
        if self._bound(self.factor) > _SIGNED_LIMIT:
            raise ConfigError(
                f"secagg ring would overflow: {self.max_clients} clients x clip {self.clip} x "
                f"scale {self.scale} can reach {self._bound(self.factor)}, above 2**31 - 1; "
                f"lower the scale, the clip or max_clients"
            )

    @property
    def factor(self) -> float:
        """The scale in use (``scale`` after defaulting; always set once constructed)."""
        return float(self.scale) if self.scale is not None else 0.0

    @property
    def resolution(self) -> float:
        """The quantisation step: each entry is off by at most half of it."""
        return 1.0 / self.factor

    def _bound(self, scale: float) -> int:
        return self.max_clients * round(self.clip * scale)

    def encode(self, vector: npt.ArrayLike) -> RingVector:
        """Clip, scale and round a float vector into ring elements."""
        x = np.asarray(vector)
        if x.ndim != 1 or not np.issubdtype(x.dtype, np.floating):
            raise UpdateRejectedError(
                f"secagg input must be a flat float vector, found shape {x.shape} dtype {x.dtype}"
            )
        if not np.isfinite(x).all():
            raise UpdateRejectedError("secagg input contains NaN or infinite values")
        # Scale, round, then clip to L = round(clip * scale): multiplying by a positive
        # constant and rounding are both monotone, so this gives exactly the integers of
        # rint(clip(x, -clip, clip) * scale), without a clipped float64 copy. float32 is
        # exact too when the scale is a power of two (overflow gives inf, which the clip
        # handles; underflow only touches values that round to 0).
        exact32 = x.dtype.itemsize <= 4 and math.frexp(self.factor)[0] == 0.5
        bound = _FLOAT32_BELOW_2_31 if exact32 else _SIGNED_LIMIT
        if self._limit > bound:  # only for one client at the very top of the range
            exact32, bound = False, _SIGNED_LIMIT
        work = np.float32 if exact32 else np.float64
        with np.errstate(over="ignore"):  # huge finite inputs become inf, then clipped
            y = np.multiply(x, work(self.factor), dtype=work)
        np.rint(y, out=y)
        np.clip(y, -bound, bound, out=y)  # so the int32 cast cannot overflow
        out = y.astype(np.int32)
        np.clip(out, -self._limit, self._limit, out=out)
        encoded: RingVector = out.view(np.uint32)
        return encoded

    @property
    def _limit(self) -> int:
        """The largest encoded magnitude, round(clip * scale)."""
        return round(self.clip * self.factor)

    def decode_sum(self, total: RingVector, count: int) -> npt.NDArray[np.float32]:
        """The float sum of ``count`` encoded vectors from their ring sum."""
        if not 0 <= count <= self.max_clients:
            raise ConfigError(
                f"decoding a sum of {count} clients, ring is sized for {self.max_clients}"
            )
        signed = np.asarray(total, dtype=np.uint32).view(np.int32)
        if math.frexp(self.factor)[0] == 0.5:
            # int32 -> float32 rounds once and dividing by a power of two is exact: the same
            # floats as the float64 route, without its two full-size temporaries.
            return np.multiply(signed, np.float32(1.0 / self.factor), dtype=np.float32)
        return (signed.astype(np.float64) / self.factor).astype(np.float32)
