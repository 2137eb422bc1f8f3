import pytest

from fedcare.core.errors import ConfigError
from fedcare.he import CkksParams
from fedcare.he.params import MAX_MODULUS_BITS_128


def test_defaults_are_128_bit_secure_with_one_data_prime():
    params = CkksParams()
    assert params.total_modulus_bits <= MAX_MODULUS_BITS_128[params.poly_modulus_degree]
    assert params.slots == 4096
    assert params.data_modulus_bits == 60
    # 2**(60 - 40 - 2): sums of up to 64 sites with entries up to 4096 cannot wrap.
    assert params.max_abs_sum == 2.0**18
    assert params.max_abs_input == 2.0**18 / 64


def test_a_modulus_beyond_the_he_standard_limit_is_refused():
    with pytest.raises(ConfigError, match=r"below 128-bit security.*at most 109 bits"):
        CkksParams(poly_modulus_degree=4096, coeff_mod_bit_sizes=(60, 60))
    CkksParams(poly_modulus_degree=4096, coeff_mod_bit_sizes=(60, 49))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("poly_modulus_degree", 3000, "must be one of"),
        ("coeff_mod_bit_sizes", (60,), "at least two primes"),
        ("coeff_mod_bit_sizes", (70, 40), "20 to 60 bits"),
        ("scale_bits", 55, "leave integer headroom"),
        ("round_bits", 35, "above the encryption noise"),
        ("max_summands", 0, "at least 1"),
    ],
)
def test_invalid_parameters_name_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message):
        CkksParams(**{field: value})
