"""Secure-aggregation messages on the deployed wire: SecAgg dataclasses <-> envelopes.

Every SecAgg message travels as one ``secagg`` envelope of the run and round, with the
session id, the protocol stage and the round's attempt in its header; masked inputs carry
their ring vector (uint32), everything else is small JSON (keys, nonces and ciphertexts in
base64, field elements in hex). The sender of a client message is never read from the
wire: the caller passes the site index of the authenticated peer (mTLS identity), so a
site cannot speak for another. Anything malformed raises ProtocolError naming the field.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from fedcare.core.errors import ProtocolError
from fedcare.runtime.envelope import Envelope
from fedcare.secagg import messages as sm
from fedcare.secagg.shamir import Share

SECAGG = "secagg"

_CLIENT_KINDS = {
    sm.AdvertiseKeys: "advertise_keys",
    sm.ShareKeys: "share_keys",
    sm.MaskedInput: "masked_input",
    sm.UnmaskResponse: "unmask_response",
}
_SERVER_KINDS = {
    sm.KeyDirectory: "key_directory",
    sm.ForwardedShares: "forwarded_shares",
    sm.UnmaskRequest: "unmask_request",
}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _Fields:
    """Typed reads of one secagg header; every failure names the field."""

    def __init__(self, env: Envelope) -> None:
        self.env = env
        self.h = env.header

    def fail(self, name: str, expected: str) -> ProtocolError:
        return ProtocolError(
            f"secagg message '{self.h.get('step', '?')}' from '{self.env.sender or '?'}': "
            f"field '{name}' must be {expected}"
        )

    def raw(self, name: str, value: Any = None) -> bytes:
        value = self.h.get(name) if value is None else value
        try:
            if not isinstance(value, str):
                raise TypeError
            return base64.b64decode(value, validate=True)
        except (TypeError, ValueError) as exc:  # binascii.Error; non-ASCII text
            raise self.fail(name, "base64 text") from exc

    def integer(self, name: str, value: Any = None) -> int:
        value = self.h.get(name) if value is None else value
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise self.fail(name, "a non-negative integer")
        return value

    def items(self, name: str, width: int) -> list[list[Any]]:
        value = self.h.get(name)
        if not isinstance(value, list) or any(
            not isinstance(v, list) or len(v) != width for v in value
        ):
            raise self.fail(name, f"a list of {width}-element lists")
        return value

    def ids(self, name: str) -> frozenset[int]:
        value = self.h.get(name)
        if not isinstance(value, list):
            raise self.fail(name, "a list of site indices")
        return frozenset(self.integer(name, v) for v in value)

    def element(self, name: str, value: Any) -> int:
        try:
            if not isinstance(value, str):
                raise TypeError
            return int(value, 16)
        except (TypeError, ValueError) as exc:
            raise self.fail(name, "hexadecimal field elements") from exc


def secure_header(step: str, session: bytes, attempt: int, **extra: Any) -> dict[str, Any]:
    """The header every secure-sum envelope (SecAgg or CKKS) starts with."""
    return {"step": step, "session": _b64(session), "attempt": attempt, **extra}


def session_of(env: Envelope) -> tuple[bytes, int]:
    """(session id, attempt) a secagg envelope claims, before it is decoded further."""
    f = _Fields(env)
    return f.raw("session"), f.integer("attempt")


def step_of(env: Envelope) -> str:
    step = env.header.get("step")
    return step if isinstance(step, str) else "?"


def client_envelope(
    message: sm.ClientMessage, run_id: str, round_: int, attempt: int, **extra: Any
) -> Envelope:
    """A site's SecAgg message as the envelope it sends (``extra``: JSON header fields)."""
    header = secure_header(_CLIENT_KINDS[type(message)], message.session_id, attempt, **extra)
    vector = None
    if isinstance(message, sm.AdvertiseKeys):
        header["c_pk"], header["s_pk"] = _b64(message.keys.c_pk), _b64(message.keys.s_pk)
    elif isinstance(message, sm.ShareKeys):
        header["shares"] = [
            [s.recipient, _b64(s.nonce), _b64(s.ciphertext)] for s in message.shares
        ]
    elif isinstance(message, sm.MaskedInput):
        vector = np.ascontiguousarray(message.vector, dtype=np.uint32)
    else:
        header["b"] = [[r.owner, format(r.share.y, "x")] for r in message.self_mask_shares]
        header["s"] = [[r.owner, format(r.share.y, "x")] for r in message.secret_key_shares]
    return Envelope.create(SECAGG, run_id, round_, header=header, vector=vector)


def parse_client(env: Envelope, sender: int) -> sm.ClientMessage:
    """Decode a site's secagg envelope; ``sender`` is the authenticated site's index."""
    f = _Fields(env)
    session = f.raw("session")
    step = env.header.get("step")
    if step == "advertise_keys":
        keys = sm.PublicKeys(sender, f.raw("c_pk"), f.raw("s_pk"))
        return sm.AdvertiseKeys(session, sender, keys)
    if step == "share_keys":
        shares = tuple(
            sm.EncryptedShare(
                sender, f.integer("shares", r), f.raw("shares", n), f.raw("shares", c)
            )
            for r, n, c in f.items("shares", 3)
        )
        return sm.ShareKeys(session, sender, shares)
    if step == "masked_input":
        if env.vector is None or env.vector.dtype != np.uint32:
            raise f.fail("vector", "a uint32 ring vector")
        return sm.MaskedInput(session, sender, env.vector)
    if step == "unmask_response":
        x = sender + 1  # the holder's Shamir point (SecAggConfig.point)
        b = tuple(
            sm.RevealedShare(f.integer("b", o), Share(x, f.element("b", y)))
            for o, y in f.items("b", 2)
        )
        s = tuple(
            sm.RevealedShare(f.integer("s", o), Share(x, f.element("s", y)))
            for o, y in f.items("s", 2)
        )
        return sm.UnmaskResponse(session, sender, b, s)
    raise f.fail("step", f"one of {sorted(_CLIENT_KINDS.values())}")


def server_envelope(message: sm.ServerMessage, run_id: str, round_: int, attempt: int) -> Envelope:
    """The coordinator's SecAgg message to ``message.recipient`` as an envelope."""
    header = secure_header(_SERVER_KINDS[type(message)], message.session_id, attempt)
    if isinstance(message, sm.KeyDirectory):
        header["keys"] = [[k.client, _b64(k.c_pk), _b64(k.s_pk)] for k in message.keys]
    elif isinstance(message, sm.ForwardedShares):
        header["shares"] = [[s.sender, _b64(s.nonce), _b64(s.ciphertext)] for s in message.shares]
    else:
        header["survivors"] = sorted(message.survivors)
        header["b"] = sorted(message.self_mask_owners)
        header["s"] = sorted(message.secret_key_owners)
    return Envelope.create(SECAGG, run_id, round_, header=header)


def parse_server(env: Envelope, recipient: int) -> sm.ServerMessage:
    """Decode the coordinator's secagg envelope addressed to this site (``recipient``)."""
    f = _Fields(env)
    session = f.raw("session")
    step = env.header.get("step")
    if step == "key_directory":
        keys = tuple(
            sm.PublicKeys(f.integer("keys", c), f.raw("keys", a), f.raw("keys", b))
            for c, a, b in f.items("keys", 3)
        )
        return sm.KeyDirectory(session, recipient, keys)
    if step == "forwarded_shares":
        shares = tuple(
            sm.EncryptedShare(
                f.integer("shares", s), recipient, f.raw("shares", n), f.raw("shares", c)
            )
            for s, n, c in f.items("shares", 3)
        )
        return sm.ForwardedShares(session, recipient, shares)
    if step == "unmask_request":
        return sm.UnmaskRequest(session, recipient, f.ids("survivors"), f.ids("b"), f.ids("s"))
    raise f.fail("step", f"one of {sorted(_SERVER_KINDS.values())}")
