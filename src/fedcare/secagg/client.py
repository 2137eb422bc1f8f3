"""The client (site) side of SecAgg / SecAgg+ as a sans-IO state machine.

Feed it the server's messages with :meth:`SecAggClient.handle`; it returns the messages to
send back. A message the current state does not accept, or one that fails a check (wrong
session, forged or replayed ciphertext, a request to reveal both secrets of one peer),
raises ProtocolError and leaves the client exactly as it was.

Everything but the last addition is independent of the site's vector: the keys, the
shares and the masks. So a site may start with ``vector=None`` while it is still training
(on another core), and hand its vector over with :meth:`SecAggClient.provide_input` once
it has one; by then its mask is ready and only ``encode(vector) + mask`` is left to do.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from enum import Enum
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcare.core.errors import ConfigError, ProtocolError, UpdateRejectedError
from fedcare.secagg import messages as sm
from fedcare.secagg import shamir
from fedcare.secagg.config import SecAggConfig
from fedcare.secagg.crypto import (
    KEY_BYTES,
    KeyPair,
    RingVector,
    associated_data,
    derive_key,
    open_sealed,
    seal,
    system_random,
)
from fedcare.secagg.field import ELEMENT_BYTES, RandomBytes, decode_element, encode_element
from fedcare.secagg.masks import add_masks, pair_seed, pair_sign

_Outcome = tuple[list["sm.ClientMessage"], "ClientState"]  # replies, next state
_SHARE_HEADER = struct.Struct(">II")  # sender, recipient: repeated inside the ciphertext
_SHARE_PLAINTEXT = _SHARE_HEADER.size + 2 * ELEMENT_BYTES


class ClientState(Enum):
    INIT = "init"
    AWAIT_KEYS = "await_keys"
    AWAIT_SHARES = "await_shares"
    AWAIT_INPUT = "await_input"  # mask ready, the vector not given yet
    AWAIT_UNMASK = "await_unmask"
    DONE = "done"


class SecAggClient:
    """One site's part in one secure aggregation of its float32 ``vector``.

    ``vector=None``: the vector comes later, through :meth:`provide_input`.
    """

    def __init__(
        self,
        config: SecAggConfig,
        client_id: int,
        vector: npt.ArrayLike | None,
        rng: RandomBytes = system_random,
    ) -> None:
        if client_id not in config.client_ids:
            raise ConfigError(f"client {client_id} is not part of this secure aggregation")
        self.config = config
        self.client_id = client_id
        self.state = ClientState.INIT
        self._rng = rng
        self._input = None if vector is None else self._encode(vector)
        self._mask: RingVector | None = None  # the whole mask, while the input is awaited
        self._c_keys = KeyPair.generate(rng)
        self._s_keys = KeyPair.generate(rng)
        self._peers: dict[int, sm.PublicKeys] = {}
        self._inbound_keys: dict[int, bytes] = {}  # AEAD key for shares from each peer
        self._self_mask_seed = b""
        # owner -> (share of owner's b, share of owner's s_sk) that this client holds
        self._held: dict[int, tuple[shamir.Share, shamir.Share]] = {}

    def start(self) -> list[sm.ClientMessage]:
        """Begin: advertise this client's two public keys."""
        if self.state is not ClientState.INIT:
            raise ProtocolError(f"client {self.client_id} has already started")
        self.state = ClientState.AWAIT_KEYS
        keys = sm.PublicKeys(self.client_id, self._c_keys.public, self._s_keys.public)
        return [sm.AdvertiseKeys(self.config.session_id, self.client_id, keys)]

    def provide_input(self, vector: npt.ArrayLike) -> list[sm.ClientMessage]:
        """Hand over the vector of a client started with ``vector=None``.

        Returns the masked input at once if the mask is ready (state AWAIT_INPUT);
        earlier, keeps the vector for when it is. A bad vector raises UpdateRejectedError,
        a second vector ProtocolError; either way nothing changes.
        """
        if self._input is not None or self.state in (ClientState.AWAIT_UNMASK, ClientState.DONE):
            raise ProtocolError(f"client {self.client_id} already has its input")
        encoded = self._encode(vector)
        if self._mask is None:
            self._input = encoded
            return []
        masked = np.add(encoded, self._mask, out=self._mask)  # the mask is not needed again
        self._mask = None
        self.state = ClientState.AWAIT_UNMASK
        return [sm.MaskedInput(self.config.session_id, self.client_id, masked)]

    def handle(self, message: sm.ServerMessage) -> list[sm.ClientMessage]:
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
        replies, self.state = entry(self, message)
        return replies

    # -- stage handlers: check everything first, then commit -----------------------------

    def _on_key_directory(self, message: sm.KeyDirectory) -> _Outcome:
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
            sealed.append(sm.EncryptedShare(self.client_id, peer, nonce, ciphertext))
        own = self.config.point(self.client_id)
        self._peers = peers
        self._inbound_keys = inbound_keys
        self._self_mask_seed = self_mask_seed
        self._held = {self.client_id: (b_shares[own], s_shares[own])}
        return [
            sm.ShareKeys(self.config.session_id, self.client_id, tuple(sealed))
        ], ClientState.AWAIT_SHARES

    def _on_forwarded_shares(self, message: sm.ForwardedShares) -> _Outcome:
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
        self._held.update(received)
        if self._input is None:  # expand the mask now; the vector is added when it comes
            self._mask = np.zeros(self.config.vector_length, dtype=np.uint32)
            add_masks(self._mask, masks)
            return [], ClientState.AWAIT_INPUT
        add_masks(self._input, masks)  # in place: the plain input is never needed again
        masked = sm.MaskedInput(self.config.session_id, self.client_id, self._input)
        return [masked], ClientState.AWAIT_UNMASK

    def _on_unmask_request(self, message: sm.UnmaskRequest) -> _Outcome:
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
        response = sm.UnmaskResponse(
            self.config.session_id,
            self.client_id,
            tuple(sm.RevealedShare(o, self._held[o][0]) for o in sorted(want_b)),
            tuple(sm.RevealedShare(o, self._held[o][1]) for o in sorted(want_s)),
        )
        return [response], ClientState.DONE

    # -- helpers ------------------------------------------------------------------------

    def _encode(self, vector: npt.ArrayLike) -> RingVector:
        encoded = self.config.ring.encode(vector)
        if encoded.shape != (self.config.vector_length,):
            raise UpdateRejectedError(
                f"client {self.client_id}: secagg input has {encoded.shape[0]} values, "
                f"expected {self.config.vector_length}"
            )
        return encoded

    def _share_key(self, shared: bytes, sender: int, recipient: int) -> bytes:
        return derive_key(shared, self.config.session_id, b"share", sender, recipient)

    def _ad(self, sender: int, recipient: int) -> bytes:
        return associated_data(self.config.session_id, sm.Stage.SHARE_KEYS, sender, recipient)


_Handler = Callable[[SecAggClient, Any], "_Outcome"]

# Which message each state accepts; the handler says which state comes next.
_TRANSITIONS: dict[tuple[ClientState, type], _Handler] = {
    (ClientState.AWAIT_KEYS, sm.KeyDirectory): SecAggClient._on_key_directory,
    (ClientState.AWAIT_SHARES, sm.ForwardedShares): SecAggClient._on_forwarded_shares,
    (ClientState.AWAIT_UNMASK, sm.UnmaskRequest): SecAggClient._on_unmask_request,
}
