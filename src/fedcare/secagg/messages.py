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


@dataclass(frozen=True, eq=False)
class FromClient:
    """What every client message carries: its session and the sending client."""

    session_id: bytes
    sender: int


@dataclass(frozen=True, eq=False)
class ToClient:
    """What every server message carries: its session and the client it is for."""

    session_id: bytes
    recipient: int


# --- client -> server -------------------------------------------------------------------


@dataclass(frozen=True)
class AdvertiseKeys(FromClient):
    stage: ClassVar[Stage] = Stage.ADVERTISE_KEYS
    keys: PublicKeys


@dataclass(frozen=True)
class ShareKeys(FromClient):
    stage: ClassVar[Stage] = Stage.SHARE_KEYS
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True, eq=False)
class MaskedInput(FromClient):
    stage: ClassVar[Stage] = Stage.MASKED_INPUT
    vector: RingVector


@dataclass(frozen=True)
class UnmaskResponse(FromClient):
    stage: ClassVar[Stage] = Stage.UNMASKING
    self_mask_shares: tuple[RevealedShare, ...]
    secret_key_shares: tuple[RevealedShare, ...]


# --- server -> client -------------------------------------------------------------------


@dataclass(frozen=True)
class KeyDirectory(ToClient):
    """The public keys of the recipient's neighbours that advertised (U1)."""

    stage: ClassVar[Stage] = Stage.SHARE_KEYS
    keys: tuple[PublicKeys, ...]


@dataclass(frozen=True)
class ForwardedShares(ToClient):
    """The encrypted shares the recipient's neighbours in U2 addressed to it."""

    stage: ClassVar[Stage] = Stage.MASKED_INPUT
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True)
class UnmaskRequest(ToClient):
    """Which shares the server wants: b_u of survivors, s_sk of clients that dropped."""

    stage: ClassVar[Stage] = Stage.UNMASKING
    survivors: frozenset[int]
    self_mask_owners: frozenset[int]
    secret_key_owners: frozenset[int]


ClientMessage = AdvertiseKeys | ShareKeys | MaskedInput | UnmaskResponse
ServerMessage = KeyDirectory | ForwardedShares | UnmaskRequest
