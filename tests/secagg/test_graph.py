import pytest

from fedcare.core.errors import ConfigError
from fedcare.secagg import CommunicationGraph, secagg_plus_degree


def test_no_degree_gives_the_complete_graph_of_classic_secagg():
    graph = CommunicationGraph(range(5), None, b"seed")
    assert graph.is_complete
    assert graph.neighbours(2) == {0, 1, 3, 4}
    assert graph.holders(2) == {0, 1, 2, 3, 4}


def test_secagg_plus_graph_is_regular_symmetric_and_fixed_by_the_seed():
    graph = CommunicationGraph(range(50), 12, b"seed")
    assert not graph.is_complete
    for c in range(50):
        assert len(graph.neighbours(c)) == 12 and c not in graph.neighbours(c)
        assert all(c in graph.neighbours(v) for v in graph.neighbours(c))
    again = CommunicationGraph(range(50), 12, b"seed")
    other = CommunicationGraph(range(50), 12, b"other seed")
    assert all(graph.neighbours(c) == again.neighbours(c) for c in range(50))
    assert any(graph.neighbours(c) != other.neighbours(c) for c in range(50))


def test_odd_degree_and_unknown_clients_are_refused():
    with pytest.raises(ConfigError, match="even"):
        CommunicationGraph(range(10), 3, b"seed")
    with pytest.raises(ConfigError, match="not part"):
        CommunicationGraph(range(10), 4, b"seed").neighbours(99)


def test_recommended_degree_grows_logarithmically():
    assert secagg_plus_degree(50) == 12
    assert secagg_plus_degree(200) == 16
    assert secagg_plus_degree(4) == 3  # small studies fall back to the complete graph
