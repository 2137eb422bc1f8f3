"""The messages of the protocol: small frozen dataclasses, no pickle.

Client-to-server messages carry a ``sender``, server-to-client messages a ``recipient``;
every message carries the ``session_id`` and names its ``stage`` (for server messages,
the stage they ask the recipient to perform). The transport must
check that the authenticated peer (mTLS) is the ``sender`` it claims: the server cannot
tell a forged sender id from a real one, while shares between clients are protected end
to end by AEAD.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from fedcare.secagg.crypto import RingVector
from fedcare.secagg.shamir import Share


class Stage(IntEnum):
    ADVERTISE_KEYS = 0
    SHARE_KEYS = 1
    MASKED_INPUT = 2
    UNMASKING = 3


@dataclass(frozen=True)
class PublicKeys:
    client: int
    c_pk: bytes  # encrypts shares sent to this client
    s_pk: bytes  # agrees pairwise mask seeds


@dataclass(frozen=True)
class EncryptedShare:
    """Shares of one sender's secrets for one recipient, sealed with their pairwise key."""

    sender: int
    recipient: int
    nonce: bytes
    ciphertext: bytes


@dataclass(frozen=True)
class RevealedShare:
    """A share of ``owner``'s secret, revealed by its holder during unmasking."""

    owner: int
    share: Share


# --- client -> server -------------------------------------------------------------------


@dataclass(frozen=True)
class AdvertiseKeys:
    stage: ClassVar[Stage] = Stage.ADVERTISE_KEYS
    session_id: bytes
    sender: int
    keys: PublicKeys


@dataclass(frozen=True)
class ShareKeys:
    stage: ClassVar[Stage] = Stage.SHARE_KEYS
    session_id: bytes
    sender: int
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True, eq=False)
class MaskedInput:
    stage: ClassVar[Stage] = Stage.MASKED_INPUT
    session_id: bytes
    sender: int
    vector: RingVector


@dataclass(frozen=True)
class UnmaskResponse:
    stage: ClassVar[Stage] = Stage.UNMASKING
    session_id: bytes
    sender: int
    self_mask_shares: tuple[RevealedShare, ...]
    secret_key_shares: tuple[RevealedShare, ...]


# --- server -> client -------------------------------------------------------------------


@dataclass(frozen=True)
class KeyDirectory:
    """The public keys of the recipient's neighbours that advertised (U1)."""

    stage: ClassVar[Stage] = Stage.SHARE_KEYS
    session_id: bytes
    recipient: int
    keys: tuple[PublicKeys, ...]


@dataclass(frozen=True)
class ForwardedShares:
    """The encrypted shares the recipient's neighbours in U2 addressed to it."""

    stage: ClassVar[Stage] = Stage.MASKED_INPUT
    session_id: bytes
    recipient: int
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True)
class UnmaskRequest:
    """Which shares the server wants: b_u of survivors, s_sk of clients that dropped."""

    stage: ClassVar[Stage] = Stage.UNMASKING
    session_id: bytes
    recipient: int
    survivors: frozenset[int]
    self_mask_owners: frozenset[int]
    secret_key_owners: frozenset[int]


ClientMessage = AdvertiseKeys | ShareKeys | MaskedInput | UnmaskResponse
ServerMessage = KeyDirectory | ForwardedShares | UnmaskRequest
