"""What the two state machines refuse: every rejection raises ProtocolError and leaves the
machine exactly where it was, so an honest run can carry on afterwards."""

import dataclasses

import numpy as np
import pytest

from fedcare.core.errors import ProtocolError, UpdateRejectedError
from fedcare.secagg import ClientState, SecAggClient, ServerState, Stage, simulate
from fedcare.secagg.messages import (
    ForwardedShares,
    MaskedInput,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from tests.secagg.harness import ManualRound, make_config, quantised_sum, seeded_rng


@pytest.fixture
def round5() -> ManualRound:
    return ManualRound(make_config(5, 3, length=64))


def test_a_full_round_by_hand(round5):
    directories = round5.to_server(round5.advertise())
    shares = round5.to_clients(directories)
    forwarded = round5.to_server(shares)
    masked = round5.to_clients(forwarded)
    requests = round5.to_server(masked)
    responses = round5.to_clients(requests)
    assert round5.to_server(responses) == []
    assert round5.server.state is ServerState.DONE
    assert round5.server.completed[Stage.UNMASKING] == set(range(5))
    expected = quantised_sum(round5.config, round5.vectors, set(range(5)))
    assert np.array_equal(round5.server.result.ring_total, expected)


def test_server_rejects_duplicates_out_of_order_and_other_sessions(round5):
    adverts = round5.advertise()
    round5.to_server(adverts[:2])
    with pytest.raises(ProtocolError, match="duplicate"):
        round5.server.handle(adverts[0])
    with pytest.raises(ProtocolError, match="does not accept MaskedInput"):
        round5.server.handle(MaskedInput(round5.config.session_id, 2, np.zeros(64, np.uint32)))
    with pytest.raises(ProtocolError, match="another session"):
        round5.server.handle(dataclasses.replace(adverts[2], session_id=b"study-7/round-02"))
    assert round5.server.state is ServerState.COLLECT_KEYS
    directories = round5.to_server(adverts[2:])  # the honest run carries on
    assert len(directories) == 5


def test_a_straggler_from_a_closed_stage_is_rejected(round5):
    adverts = round5.advertise()
    round5.to_server(adverts[:4])
    round5.server.close_stage()  # deadline: client 4 is out
    with pytest.raises(ProtocolError, match="does not accept AdvertiseKeys"):
        round5.server.handle(adverts[4])
    assert round5.server.completed[Stage.ADVERTISE_KEYS] == {0, 1, 2, 3}


def test_server_rejects_shares_claiming_another_sender_or_missing_a_recipient(round5):
    shares = round5.to_clients(round5.to_server(round5.advertise()))
    first = shares[0]
    assert isinstance(first, ShareKeys)
    forged = dataclasses.replace(first.shares[0], sender=3)
    with pytest.raises(ProtocolError, match="claiming another sender"):
        round5.server.handle(dataclasses.replace(first, shares=(forged, *first.shares[1:])))
    with pytest.raises(ProtocolError, match="one share to each"):
        round5.server.handle(dataclasses.replace(first, shares=first.shares[1:]))
    round5.to_server(shares)
    assert round5.server.state is ServerState.COLLECT_MASKED


def forwarded_to(round5: ManualRound, client: int) -> ForwardedShares:
    forwarded = round5.to_server(round5.to_clients(round5.to_server(round5.advertise())))
    (message,) = [m for m in forwarded if m.recipient == client]
    assert isinstance(message, ForwardedShares)
    return message


def test_client_rejects_tampered_redirected_and_forged_shares(round5):
    message = forwarded_to(round5, 0)
    client = round5.clients[0]
    item = message.shares[0]
    tampered = dataclasses.replace(
        item, ciphertext=bytes([item.ciphertext[0] ^ 1]) + item.ciphertext[1:]
    )
    other_sender = dataclasses.replace(item, sender=message.shares[1].sender)
    for bad in (tampered, other_sender):
        with pytest.raises(ProtocolError, match="failed authentication"):
            client.handle(dataclasses.replace(message, shares=(bad, *message.shares[1:])))
    # A share meant for client 1, redirected to client 0.
    redirected = forwarded_to(ManualRound(round5.config), 1).shares[0]
    with pytest.raises(ProtocolError, match="unexpected or duplicate"):
        client.handle(dataclasses.replace(message, shares=(redirected, *message.shares[1:])))
    with pytest.raises(ProtocolError, match="unexpected or duplicate"):
        client.handle(dataclasses.replace(message, shares=(item, *message.shares)))
    assert client.state is ClientState.AWAIT_SHARES
    (masked,) = client.handle(message)
    assert isinstance(masked, MaskedInput)


def test_client_rejects_a_replayed_message_and_one_from_another_round(round5):
    directories = round5.to_server(round5.advertise())
    client = round5.clients[2]
    (directory,) = [d for d in directories if d.recipient == 2]
    client.handle(directory)
    with pytest.raises(ProtocolError, match="does not accept KeyDirectory"):
        client.handle(directory)
    message = forwarded_to(
        ManualRound(make_config(5, 3, length=64, session=b"study-7/round-02")), 2
    )
    with pytest.raises(ProtocolError, match="another session"):
        client.handle(message)
    # Even relabelled with this round's session id, the old ciphertexts do not open.
    with pytest.raises(ProtocolError, match="failed authentication"):
        client.handle(dataclasses.replace(message, session_id=round5.config.session_id))
    assert client.state is ClientState.AWAIT_SHARES


def test_client_refuses_to_reveal_both_secrets_of_the_same_peer(round5):
    forwarded = round5.to_server(round5.to_clients(round5.to_server(round5.advertise())))
    masked = round5.to_clients(forwarded)
    requests = round5.to_server(masked[:4])  # nothing from client 4 yet
    assert requests == []
    client = round5.clients[0]
    greedy = UnmaskRequest(
        round5.config.session_id,
        0,
        survivors=frozenset(range(5)),
        self_mask_owners=frozenset(range(5)),
        secret_key_owners=frozenset({3}),
    )
    with pytest.raises(ProtocolError, match="refuses: asked for both"):
        client.handle(greedy)
    # Claiming client 3 dropped while it is among the survivors is refused as well.
    with pytest.raises(ProtocolError, match="contradict the survivor set"):
        client.handle(dataclasses.replace(greedy, self_mask_owners=frozenset({0, 1})))
    too_few = dataclasses.replace(
        greedy,
        survivors=frozenset({0, 1}),
        self_mask_owners=frozenset({0, 1}),
        secret_key_owners=frozenset(),
    )
    with pytest.raises(ProtocolError, match="below the floor"):
        client.handle(too_few)
    assert client.state is ClientState.AWAIT_UNMASK


def test_no_client_ever_reveals_both_shares_for_one_owner():
    config = make_config(8, 5, length=8)
    rnd = ManualRound(config)
    forwarded = rnd.to_server(rnd.to_clients(rnd.to_server(rnd.advertise())))
    masked = rnd.to_clients([m for m in forwarded if m.recipient not in {1, 6}])  # 1, 6 drop
    rnd.to_server(masked)
    requests = rnd.server.close_stage()
    responses = rnd.to_clients(requests)
    for response in responses:
        assert isinstance(response, UnmaskResponse)
        b_owners = {r.owner for r in response.self_mask_shares}
        s_owners = {r.owner for r in response.secret_key_shares}
        assert s_owners == {1, 6} and not b_owners & s_owners
    rnd.to_server(responses)
    assert rnd.server.result.included == set(range(8)) - {1, 6}


def test_server_rejects_an_unmask_response_with_another_holders_share(round5):
    forwarded = round5.to_server(round5.to_clients(round5.to_server(round5.advertise())))
    responses = round5.to_clients(round5.to_server(round5.to_clients(forwarded)))
    first, second = responses[0], responses[1]
    assert isinstance(first, UnmaskResponse) and isinstance(second, UnmaskResponse)
    stolen = dataclasses.replace(first, self_mask_shares=second.self_mask_shares)
    with pytest.raises(ProtocolError):
        round5.server.handle(stolen)
    round5.to_server(responses)
    assert round5.server.state is ServerState.DONE


def test_a_single_masked_input_reveals_nothing_about_the_site_vector():
    config = make_config(5, 3, length=20_000)
    rnd = ManualRound(config)
    forwarded = rnd.to_server(rnd.to_clients(rnd.to_server(rnd.advertise())))
    masked = rnd.to_clients(forwarded)
    for message in masked:
        assert isinstance(message, MaskedInput)
        encoded = config.ring.encode(rnd.vectors[message.sender])
        assert np.mean(message.vector == encoded) < 1e-3
        # The difference is the mask: uniform bits, unrelated to the input.
        bits = np.unpackbits((message.vector - encoded).view(np.uint8))
        assert abs(bits.mean() - 0.5) < 0.01
        corr = np.corrcoef(message.vector.astype(np.float64), encoded.view(np.int32))[0, 1]
        assert abs(corr) < 0.05


def test_too_few_survivors_abort_and_no_result_is_ever_returned():
    config = make_config(5, 3, length=8)
    with pytest.raises(ProtocolError, match="only 2 clients completed"):
        simulate(config, ManualRound(config).vectors, {Stage.SHARE_KEYS: {0, 1, 2}}, seeded_rng(0))
    rnd = ManualRound(config)
    rnd.to_server(rnd.advertise()[:2])
    with pytest.raises(ProtocolError):
        rnd.server.close_stage()
    assert rnd.server.state is ServerState.ABORTED
    with pytest.raises(ProtocolError, match="no result"):
        _ = rnd.server.result


def test_a_site_can_mask_before_its_vector_exists_and_add_it_last():
    config = make_config(5, 3, length=64)
    late = ManualRound(config)
    vectors = late.vectors
    late.clients = {c: SecAggClient(config, c, None, seeded_rng(c)) for c in range(5)}
    forwarded = late.to_server(late.to_clients(late.to_server(late.advertise())))
    late.clients[4].provide_input(vectors[4])  # ready early: masked as soon as shares come
    masked = late.to_clients(forwarded)
    assert [m.sender for m in masked] == [4]
    assert {late.clients[c].state for c in range(4)} == {ClientState.AWAIT_INPUT}
    for c in range(4):
        masked += late.clients[c].provide_input(vectors[c])
    assert late.to_server(late.to_clients(late.to_server(masked))) == []
    assert np.array_equal(
        late.server.result.ring_total, quantised_sum(config, vectors, set(range(5)))
    )


def test_a_bad_or_second_late_vector_is_refused_and_changes_nothing():
    config = make_config(3, 2, length=8)
    client = SecAggClient(config, 0, None, seeded_rng(0))
    with pytest.raises(UpdateRejectedError, match="7 values, expected 8"):
        client.provide_input(np.zeros(7, np.float32))
    with pytest.raises(UpdateRejectedError, match="NaN"):
        client.provide_input(np.full(8, np.nan, np.float32))
    assert client.provide_input(np.zeros(8, np.float32)) == []  # kept for later
    with pytest.raises(ProtocolError, match="already has its input"):
        client.provide_input(np.ones(8, np.float32))
    assert client.state is ClientState.INIT


def test_a_site_still_training_when_the_stage_closes_is_left_out_of_the_sum():
    config = make_config(5, 3, length=64)
    late = ManualRound(config)
    late.clients[2] = SecAggClient(config, 2, None, seeded_rng(2))
    forwarded = late.to_server(late.to_clients(late.to_server(late.advertise())))
    requests = late.to_server(late.to_clients(forwarded))  # 2 sent nothing
    assert requests == []
    requests = late.server.close_stage()  # the deadline passes
    assert late.to_server(late.to_clients(requests)) == []
    included = {0, 1, 3, 4}
    assert late.server.result.included == included
    assert np.array_equal(
        late.server.result.ring_total, quantised_sum(config, late.vectors, included)
    )
