"""What a site may declare on its stream: bounded by the run's plan, checked before any
byte of the vector is reserved or buffered.

A valid certificate used to be enough to announce an 8 GiB vector (the transport's static
limit) and hold the coordinator's in-flight budget while sending nothing, which stalled
every honest site. The largest message a site of a plan can legitimately send follows
from the plan: its update (the model's values plus the client rule's extras, as float64
at most, or as CKKS ciphertexts), or its evaluation counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from fedcare.core.errors import ProtocolError
from fedcare.core.metrics import AUC_BINS
from fedcare.he.params import MAX_MODULUS_BITS_128
from fedcare.net.serde import VectorHead

FRAMING_BYTES = 64 << 10  # headers, segment tables, an encrypted vector's frame
PLAIN_BYTES_PER_VALUE = 8  # float64 is the widest element any upload uses
EVAL_MODELS = 4  # global, personal, fine-tuned and one spare evaluated per message
SEAL_OVERHEAD_BYTES = 4096  # a serialised ciphertext's own header


def ckks_bytes(values: int) -> int:
    """The most ``values`` floats can take as CKKS ciphertexts under any parameters that
    keep 128-bit security: ceil(values / (N/2)) ciphertexts of two polynomials of N
    coefficients modulo q (at most ``MAX_MODULUS_BITS_128[N]`` bits), for the worst N."""
    worst = 0
    for degree, bits in MAX_MODULUS_BITS_128.items():
        ciphertexts = math.ceil(max(values, 1) / (degree // 2))
        per_ciphertext = 2 * degree * math.ceil(bits / 8) + SEAL_OVERHEAD_BYTES
        worst = max(worst, ciphertexts * per_ciphertext)
    return worst


def max_message_bytes(
    size: int, extras: Mapping[str, int], num_classes: int, encrypted: bool
) -> int:
    """The largest vector a site of a run may announce, in bytes.

    ``size``: the model's values; ``extras``: values of each extra the client rule uploads;
    ``encrypted``: the plan encrypts uploads (CKKS), which carry one more value (the count).
    """
    values = size + sum(extras.values())
    update = ckks_bytes(values + 1) if encrypted else values * PLAIN_BYTES_PER_VALUE
    rows = num_classes if num_classes > 2 else 1
    evaluation = EVAL_MODELS * (num_classes**2 + rows * 2 * AUC_BINS) * 8
    return FRAMING_BYTES + max(update, evaluation)


def check_declared(head: VectorHead, site: str, run_id: str, limit: int) -> None:
    """Refuse a message whose announced vector exceeds what the plan allows."""
    if head.nbytes > limit:
        raise ProtocolError(
            f"site '{site}' announced a '{head.envelope.kind}' message of {head.nbytes} bytes; "
            f"the plan of run '{run_id}' allows at most {limit} bytes per message"
        )
