"""CKKS parameters for summation only, and the security rule they must meet.

Summing ciphertexts needs no multiplication, so no rescaling and no modulus chain: one
data prime carries the values and a second, the special prime, exists only because
TenSEAL generates relinearisation keys with every context and SEAL needs a special prime
for them (they are never used or sent). A ciphertext holds two
polynomials of ``poly_modulus_degree`` coefficients modulo the data prime (8 bytes each)
and packs ``poly_modulus_degree / 2`` values, so it costs 8x the float32 bytes whatever
the degree; a larger degree only means fewer, larger ciphertexts.

Security: the HomomorphicEncryption.org standard (Albrecht et al. 2018, Table 1, as
SEAL's ``CoeffModulus::MaxBitCount`` for ``sec_level_type::tc128``) gives 128-bit
classical security for a ternary secret when the whole coefficient modulus (data and
special primes) stays within ``MAX_MODULUS_BITS_128[N]`` bits. The defaults, N = 8192
with 60 + 40 = 100 bits, are far inside the 218-bit limit; SEAL itself also refuses
parameters above the limit.

Precision: values are encoded at scale ``2**scale_bits``; the data prime leaves
``data_bits - scale_bits - 2`` bits of integer headroom (one bit for sign, one of margin
for noise), so every entry of a sum must stay within ``max_abs_sum``. With the defaults,
|sum| <= 2**18 per entry; the raw CKKS error of a sum of 10 fresh ciphertexts is about
1e-8, and decryption rounds to 2**-20, so results are within about 5e-7 of the exact sum.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedcare.core.errors import ConfigError

# Largest total coefficient-modulus bits for 128-bit security (HE standard, ternary secret).
MAX_MODULUS_BITS_128: dict[int, int] = {
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}


@dataclass(frozen=True)
class CkksParams:
    """Parameters of a CKKS key set used to sum float32 vectors at a coordinator.

    ``round_bits``: decrypted values are rounded to multiples of ``2**-round_bits``. The
    rounding sits far above the encryption noise (about 2**-26 at the default scale) and
    far below the precision an update needs; it hides the noise a raw CKKS decryption
    would reveal about the secret key (Li and Micciancio 2021) when a decrypted aggregate
    is later shared with the party that saw the ciphertexts.

    ``max_summands``: the most ciphertexts one aggregate may add up; each encrypted
    entry must stay within ``max_abs_sum / max_summands`` so that no honest sum can wrap
    around the data prime (a wrapped sum decrypts to garbage without any error).
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40)
    scale_bits: int = 40
    round_bits: int = 20
    max_summands: int = 64

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if n not in MAX_MODULUS_BITS_128:
            raise ConfigError(
                f"CKKS poly_modulus_degree must be one of {sorted(MAX_MODULUS_BITS_128)}, found {n}"
            )
        sizes = self.coeff_mod_bit_sizes
        if len(sizes) < 2 or any(not 20 <= b <= 60 for b in sizes):
            raise ConfigError(
                f"CKKS coeff_mod_bit_sizes must list at least two primes (data primes, then "
                f"the special prime) of 20 to 60 bits each, found {list(sizes)}"
            )
        if self.total_modulus_bits > MAX_MODULUS_BITS_128[n]:
            raise ConfigError(
                f"CKKS coefficient modulus of {self.total_modulus_bits} bits is below 128-bit "
                f"security for poly_modulus_degree {n} (at most {MAX_MODULUS_BITS_128[n]} bits "
                f"per the HE standard); use fewer or smaller primes or a larger degree"
            )
        if not 20 <= self.scale_bits <= self.data_modulus_bits - 10:
            raise ConfigError(
                f"CKKS scale_bits must be between 20 and data_bits - 10 = "
                f"{self.data_modulus_bits - 10} to leave integer headroom, found {self.scale_bits}"
            )
        if not 1 <= self.round_bits <= self.scale_bits - 8:
            raise ConfigError(
                f"CKKS round_bits must be between 1 and scale_bits - 8 = {self.scale_bits - 8} "
                f"so that rounding stays above the encryption noise, found {self.round_bits}"
            )
        if self.max_summands < 1:
            raise ConfigError(f"CKKS max_summands must be at least 1, found {self.max_summands}")

    @property
    def slots(self) -> int:
        """Values packed into one ciphertext."""
        return self.poly_modulus_degree // 2

    @property
    def data_modulus_bits(self) -> int:
        """Bits of the modulus a fresh ciphertext lives under (all primes but the special one)."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def total_modulus_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    @property
    def max_abs_sum(self) -> float:
        """Largest magnitude any entry of a decrypted sum may have."""
        return max_abs_for(self.data_modulus_bits, self.scale_bits)

    @property
    def max_abs_input(self) -> float:
        """Largest magnitude any entry of one encrypted vector may have."""
        return self.max_abs_sum / self.max_summands


def max_abs_for(data_modulus_bits: int, scale_bits: int) -> float:
    """Integer headroom of a data modulus at a scale: one bit for sign, one for noise."""
    return float(2.0 ** (data_modulus_bits - scale_bits - 2))
