"""What a receiver buffers per connected site by default: the chunk in progress plus the
read-ahead, a small bound whatever the model's size (ten sites of a 100 MB model used to
cost the coordinator about 3x the model in transport buffers at 4 MiB chunks)."""

import inspect

from fedcare.cli import deploy
from fedcare.net.channel import TransportLimits
from fedcare.net.serde import DEFAULT_CHUNK_BYTES


def test_a_connected_site_costs_at_most_two_mib_of_transport_buffers_by_default():
    limits = TransportLimits()
    assert limits.chunk_bytes + limits.read_ahead_bytes <= 2 << 20


def test_every_deploy_command_defaults_to_the_transport_chunk_size():
    for command in (deploy.coordinator_start, deploy.coordinator_resume, deploy.site_start):
        default = inspect.signature(command).parameters["chunk_mib"].default
        assert int(default * (1 << 20)) == DEFAULT_CHUNK_BYTES, command.__name__
