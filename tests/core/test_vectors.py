import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedcare.core.errors import LayoutMismatchError
from fedcare.core.vectors import ParamLayout, TensorSpec

LAYOUT = ParamLayout(
    (
        TensorSpec("w", (2, 3)),
        TensorSpec("b", (3,)),
        TensorSpec("count", (), dtype="int64", trainable=False),
    )
)


def test_flatten_orders_tensors_by_layout_and_unflatten_restores_them():
    arrays = {"b": np.array([7, 8, 9]), "w": np.arange(6).reshape(2, 3), "count": np.array(5)}
    vec = LAYOUT.flatten(arrays)
    assert vec.dtype == np.float32
    assert vec.tolist() == [0, 1, 2, 3, 4, 5, 7, 8, 9, 5]
    back = LAYOUT.unflatten(vec)
    assert back["count"].dtype == np.int64 and int(back["count"]) == 5
    np.testing.assert_array_equal(back["w"], arrays["w"])


def test_trainable_mask_excludes_buffers():
    assert LAYOUT.mask().tolist() == [True] * 9 + [False]


def test_shape_mismatch_names_the_tensor():
    with pytest.raises(LayoutMismatchError, match=r"'w'.*expected shape"):
        LAYOUT.flatten({"w": np.zeros((3, 2)), "b": np.zeros(3), "count": np.zeros(())})


def test_wrong_vector_length_is_refused():
    with pytest.raises(LayoutMismatchError, match="expected a flat vector of 10"):
        LAYOUT.check_vector(np.zeros(9, dtype=np.float32))


def test_lossy_dtypes_are_refused():
    with pytest.raises(LayoutMismatchError, match="float64"):
        ParamLayout((TensorSpec("x", (2,), dtype="float64"),))


@given(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 4)), min_size=1, max_size=5))
def test_json_round_trip_keeps_layout_and_fingerprint(shapes):
    layout = ParamLayout(tuple(TensorSpec(f"t{i}", s) for i, s in enumerate(shapes)))
    again = ParamLayout.from_json(layout.to_json())
    assert again == layout
    assert again.fingerprint() == layout.fingerprint()
