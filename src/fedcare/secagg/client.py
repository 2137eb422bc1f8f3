"""The client (site) side of SecAgg / SecAgg+ as a sans-IO state machine.

Feed it the server's messages with :meth:`SecAggClient.handle`; it returns the messages to
send back. A message the current state does not accept, or one that fails a check (wrong
session, forged or replayed ciphertext, a request to reveal both secrets of one peer),
raises ProtocolError and leaves the client exactly as it was.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from enum import Enum
from typing import Any

import numpy.typing as npt

from fedcare.core.errors import ConfigError, ProtocolError, UpdateRejectedError
from fedcare.secagg import shamir
from fedcare.secagg.config import SecAggConfig
from fedcare.secagg.crypto import (
    KEY_BYTES,
    KeyPair,
    associated_data,
    derive_key,
    open_sealed,
    seal,
    system_random,
)
from fedcare.secagg.field import ELEMENT_BYTES, RandomBytes, decode_element, encode_element
from fedcare.secagg.masks import add_masks, pair_seed, pair_sign
from fedcare.secagg.messages import (
    AdvertiseKeys,
    ClientMessage,
    EncryptedShare,
    ForwardedShares,
    KeyDirectory,
    MaskedInput,
    PublicKeys,
    RevealedShare,
    ServerMessage,
    ShareKeys,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
)

_SHARE_HEADER = struct.Struct(">II")  # sender, recipient: repeated inside the ciphertext
_SHARE_PLAINTEXT = _SHARE_HEADER.size + 2 * ELEMENT_BYTES


class ClientState(Enum):
    INIT = "init"
    AWAIT_KEYS = "await_keys"
    AWAIT_SHARES = "await_shares"
    AWAIT_UNMASK = "await_unmask"
    DONE = "done"


class SecAggClient:
    """One site's part in one secure aggregation of its float32 ``vector``."""

    def __init__(
        self,
        config: SecAggConfig,
        client_id: int,
        vector: npt.ArrayLike,
        rng: RandomBytes = system_random,
    ) -> None:
        if client_id not in config.client_ids:
            raise ConfigError(f"client {client_id} is not part of this secure aggregation")
        encoded = config.ring.encode(vector)
        if encoded.shape != (config.vector_length,):
            raise UpdateRejectedError(
                f"client {client_id}: secagg input has {encoded.shape[0]} values, "
                f"expected {config.vector_length}"
            )
        self.config = config
        self.client_id = client_id
        self.state = ClientState.INIT
        self._rng = rng
        self._input = encoded
        self._c_keys = KeyPair.generate(rng)
        self._s_keys = KeyPair.generate(rng)
        self._peers: dict[int, PublicKeys] = {}
        self._inbound_keys: dict[int, bytes] = {}  # AEAD key for shares from each peer
        self._self_mask_seed = b""
        # owner -> (share of owner's b, share of owner's s_sk) that this client holds
        self._held: dict[int, tuple[shamir.Share, shamir.Share]] = {}

    def start(self) -> list[ClientMessage]:
        """Begin: advertise this client's two public keys."""
        if self.state is not ClientState.INIT:
            raise ProtocolError(f"client {self.client_id} has already started")
        self.state = ClientState.AWAIT_KEYS
        keys = PublicKeys(self.client_id, self._c_keys.public, self._s_keys.public)
        return [AdvertiseKeys(self.config.session_id, self.client_id, keys)]

    def handle(self, message: ServerMessage) -> list[ClientMessage]:
        """Process one server message; on ProtocolError nothing changes."""
        if message.session_id != self.config.session_id:
            raise ProtocolError(f"client {self.client_id}: message from another session")
        if message.recipient != self.client_id:
            raise ProtocolError(
                f"client {self.client_id}: message addressed to client {message.recipient}"
            )
        entry = _TRANSITIONS.get((self.state, type(message)))
        if entry is None:
            raise ProtocolError(
                f"client {self.client_id} in state {self.state.value} does not accept "
                f"{type(message).__name__}"
            )
        handler, next_state = entry
        replies = handler(self, message)
        self.state = next_state
        return replies

    # -- stage handlers: check everything first, then commit -----------------------------

    def _on_key_directory(self, message: KeyDirectory) -> list[ClientMessage]:
        neighbours = self.config.graph.neighbours(self.client_id)
        peers = {k.client: k for k in message.keys}
        if len(peers) != len(message.keys) or not peers.keys() <= neighbours:
            raise ProtocolError(f"client {self.client_id}: key directory lists non-neighbours")
        all_keys = [self._c_keys.public, self._s_keys.public]
        all_keys += [pk for k in message.keys for pk in (k.c_pk, k.s_pk)]
        if any(len(pk) != KEY_BYTES for pk in all_keys) or len(set(all_keys)) != len(all_keys):
            raise ProtocolError(f"client {self.client_id}: public keys malformed or repeated")
        if len(peers) + 1 < self.config.threshold:
            raise ProtocolError(
                f"client {self.client_id}: only {len(peers)} neighbours advertised keys; "
                f"{self.config.threshold - 1} are needed to hold shares of its secrets"
            )
        self_mask_seed = self._rng(KEY_BYTES)
        points = [self.config.point(c) for c in [self.client_id, *peers]]
        t = self.config.threshold
        b_shares = shamir.split(self_mask_seed, t, points, self._rng)
        s_shares = shamir.split(self._s_keys.private, t, points, self._rng)
        sealed = []
        inbound_keys = {}
        for peer in sorted(peers):
            # One X25519 per peer yields both directional keys.
            shared = self._c_keys.agree(peers[peer].c_pk)
            inbound_keys[peer] = self._share_key(shared, peer, self.client_id)
            x = self.config.point(peer)
            plaintext = (
                _SHARE_HEADER.pack(self.client_id, peer)
                + encode_element(b_shares[x].y)
                + encode_element(s_shares[x].y)
            )
            nonce, ciphertext = seal(
                self._share_key(shared, self.client_id, peer),
                plaintext,
                self._ad(self.client_id, peer),
                self._rng,
            )
            sealed.append(EncryptedShare(self.client_id, peer, nonce, ciphertext))
        own = self.config.point(self.client_id)
        self._peers = peers
        self._inbound_keys = inbound_keys
        self._self_mask_seed = self_mask_seed
        self._held = {self.client_id: (b_shares[own], s_shares[own])}
        return [ShareKeys(self.config.session_id, self.client_id, tuple(sealed))]

    def _on_forwarded_shares(self, message: ForwardedShares) -> list[ClientMessage]:
        received: dict[int, tuple[shamir.Share, shamir.Share]] = {}
        x = self.config.point(self.client_id)
        for item in message.shares:
            sender = item.sender
            if item.recipient != self.client_id or sender not in self._peers or sender in received:
                raise ProtocolError(
                    f"client {self.client_id}: unexpected or duplicate share from {sender}"
                )
            plaintext = open_sealed(
                self._inbound_keys[sender],
                item.nonce,
                item.ciphertext,
                self._ad(sender, self.client_id),
            )
            if len(plaintext) != _SHARE_PLAINTEXT:
                raise ProtocolError(f"client {self.client_id}: malformed share from {sender}")
            if _SHARE_HEADER.unpack_from(plaintext) != (sender, self.client_id):
                raise ProtocolError(
                    f"client {self.client_id}: share from {sender} names a different sender"
                )
            body = plaintext[_SHARE_HEADER.size :]
            received[sender] = (
                shamir.Share(x, decode_element(body[:ELEMENT_BYTES])),
                shamir.Share(x, decode_element(body[ELEMENT_BYTES:])),
            )
        if len(received) + 1 < self.config.threshold:
            raise ProtocolError(
                f"client {self.client_id}: only {len(received)} neighbours shared keys; "
                f"its secrets could not be recovered"
            )
        session, me = self.config.session_id, self.client_id
        masks = [(self._self_mask_seed, 1)] + [
            (pair_seed(self._s_keys, me, self._peers[p].s_pk, p, session), pair_sign(me, p))
            for p in sorted(received)
        ]
        masked = self._input  # masked in place: the plain input is never needed again
        add_masks(masked, masks)
        self._held.update(received)
        return [MaskedInput(self.config.session_id, self.client_id, masked)]

    def _on_unmask_request(self, message: UnmaskRequest) -> list[ClientMessage]:
        want_b, want_s = message.self_mask_owners, message.secret_key_owners
        if want_b & want_s:
            raise ProtocolError(
                f"client {self.client_id} refuses: asked for both the self-mask and the "
                f"secret-key shares of {sorted(want_b & want_s)}, which would unmask them"
            )
        survivors = message.survivors
        if self.client_id not in survivors or len(survivors) < self.config.survivor_floor:
            raise ProtocolError(
                f"client {self.client_id} refuses: survivor set of {len(survivors)} clients is "
                f"below the floor {self.config.survivor_floor} or omits this client"
            )
        if not want_b <= survivors or want_s & survivors:
            raise ProtocolError(
                f"client {self.client_id} refuses: requested owners contradict the survivor set"
            )
        if not (want_b | want_s) <= self._held.keys():
            raise ProtocolError(f"client {self.client_id}: asked for shares it does not hold")
        return [
            UnmaskResponse(
                self.config.session_id,
                self.client_id,
                tuple(RevealedShare(o, self._held[o][0]) for o in sorted(want_b)),
                tuple(RevealedShare(o, self._held[o][1]) for o in sorted(want_s)),
            )
        ]

    # -- helpers ------------------------------------------------------------------------

    def _share_key(self, shared: bytes, sender: int, recipient: int) -> bytes:
        return derive_key(shared, self.config.session_id, b"share", sender, recipient)

    def _ad(self, sender: int, recipient: int) -> bytes:
        return associated_data(self.config.session_id, Stage.SHARE_KEYS, sender, recipient)


_Handler = Callable[[SecAggClient, Any], list[ClientMessage]]

_TRANSITIONS: dict[tuple[ClientState, type], tuple[_Handler, ClientState]] = {
    (ClientState.AWAIT_KEYS, KeyDirectory): (
        SecAggClient._on_key_directory,
        ClientState.AWAIT_SHARES,
    ),
    (ClientState.AWAIT_SHARES, ForwardedShares): (
        SecAggClient._on_forwarded_shares,
        ClientState.AWAIT_UNMASK,
    ),
    (ClientState.AWAIT_UNMASK, UnmaskRequest): (
        SecAggClient._on_unmask_request,
        ClientState.DONE,
    ),
}
