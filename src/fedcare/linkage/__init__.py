"""Record linkage without revealing identifiers: normalised, keyed-hashed, then DH-PSI.

Pure cryptography and numpy (no torch, no gRPC); the deployed runtime relays the same
sans-IO machines later. Threat model and what each party learns: docs/linkage.md.
"""

from fedcare.linkage.identifiers import (
    KeyedIdentifiers,
    keyed_identifiers,
    read_identifier_batches,
    read_keyed_identifiers,
)
from fedcare.linkage.messages import (
    ElementBatch,
    IntersectionSize,
    MatchPositions,
    PsiMessage,
    decode,
    encode,
)
from fedcare.linkage.normalise import IdentifierRules
from fedcare.linkage.psi import MODES, PsiConfig, PsiParty, PsiResult, PsiState
from fedcare.linkage.simulate import psi_results, run_psi

__all__ = [
    "MODES",
    "ElementBatch",
    "IdentifierRules",
    "IntersectionSize",
    "KeyedIdentifiers",
    "MatchPositions",
    "PsiConfig",
    "PsiMessage",
    "PsiParty",
    "PsiResult",
    "PsiState",
    "decode",
    "encode",
    "keyed_identifiers",
    "psi_results",
    "read_identifier_batches",
    "read_keyed_identifiers",
    "run_psi",
]
