"""The slice-stack seam: 2-D and 2.5-D generator inputs, edges, numpy and torch alike."""

import numpy as np
import pytest
import torch
from DualDSynthesisLib.model.slicestack import channels, slice_stack, stack_indices


def _volume(k: int = 5) -> np.ndarray:
    return np.arange(k, dtype=np.float32)[:, None, None] * np.ones((1, 4, 6), np.float32)


def test_context_zero_is_plain_2d():
    vol = _volume()
    out = slice_stack(vol, [3, 0], 0)
    assert out.shape == (2, 1, 4, 6)
    np.testing.assert_array_equal(out[:, 0, 0, 0], [3, 0])


@pytest.mark.parametrize(("index", "expected"), [(0, [0, 0, 1]), (2, [1, 2, 3]), (4, [3, 4, 4])])
def test_one_neighbour_each_side_repeats_the_edge_slice(index, expected):
    out = slice_stack(_volume(), [index], 1)
    assert out.shape == (1, 3, 4, 6)
    np.testing.assert_array_equal(out[0, :, 0, 0], expected)


def test_torch_tensor_same_as_numpy():
    vol = _volume(7)
    a = slice_stack(vol, [0, 3, 6], 2)
    b = slice_stack(torch.from_numpy(vol), torch.tensor([0, 3, 6]), 2)
    assert isinstance(b, torch.Tensor) and b.shape == (3, 5, 4, 6)
    np.testing.assert_array_equal(a, b.numpy())


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="context slices"):
        stack_indices(5, [0], -1)
    with pytest.raises(ValueError, match="slice indices"):
        stack_indices(5, [5], 0)
    with pytest.raises(ValueError, match="volume"):
        slice_stack(np.zeros((2, 2)), [0], 0)
    assert channels(0) == 1 and channels(2) == 5


def test_bounds_keep_a_stack_inside_its_subject():
    # two subjects concatenated: slices 0-2 and 3-6
    out = stack_indices(7, [3, 2], 1, first=[3, 0], last=[6, 2])
    np.testing.assert_array_equal(out, [[3, 3, 4], [1, 2, 2]])
