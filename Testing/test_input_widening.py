"""Widening a model's inputs (model/input_widening.py, issue 23): the widened generator is the parent's function
whatever the new inputs hold, the new inputs' weights are trainable zeros, and what cannot be widened is refused."""

from __future__ import annotations

import pytest
import torch
from DualDSynthesisLib.model.architecture import ArchitectureConfig
from DualDSynthesisLib.model.input_widening import widened_state
from DualDSynthesisLib.model.inputs import InputDeclaration, InputError


def _g(inputs: InputDeclaration, context: int = 1, width: int = 4) -> torch.nn.Module:
    torch.manual_seed(len(inputs))
    arch = ArchitectureConfig(in_channels=inputs.channels(context), g_base_width=width, g_depth=2, g_error_head=True)
    return arch.generator().eval()


@pytest.mark.parametrize(("parent", "child"), [
    ("t1", "t1,t1c,flair"), ("t1", "t1,flair"), ("t1,flair", "t1,t1c,flair"), ("t1,flair", "t1,flair,t1c"),
])
def test_the_widened_generator_computes_the_parents_function(parent: str, child: str) -> None:
    p_in, c_in = InputDeclaration.parse(parent), InputDeclaration.parse(child)
    g_parent, g_child = _g(p_in), _g(c_in)
    g_child.load_state_dict(widened_state(g_parent.state_dict(), p_in, g_child.state_dict(), c_in, 1))
    stacks = {name: torch.rand(2, 3, 32, 32) for name in c_in.names}
    with torch.no_grad():
        for given in ({"t1"}, set(p_in.names), set(c_in.names)):  # whatever the child's extra inputs hold
            x_parent = p_in.stack_inputs([stacks[n] if n in given else None for n in p_in.names])
            x_child = c_in.stack_inputs([stacks[n] if n in given else None for n in c_in.names])
            torch.testing.assert_close(g_child(x_child), g_parent(x_parent))
    first = next(k for k, v in g_child.state_dict().items() if v.dim() == 4)
    w = g_child.state_dict()[first]
    assert w.shape[1] == c_in.channels(1) and w.abs().sum() > 0
    if parent == "t1":
        assert w[:, 3:].abs().sum() == 0  # every new channel starts at zero


def test_what_cannot_be_widened_is_refused() -> None:
    t1, t1flair = InputDeclaration.parse("t1"), InputDeclaration.parse("t1,flair")
    g1, g2 = _g(t1), _g(t1flair)
    with pytest.raises(InputError, match="reference input is t1, not flair"):
        widened_state(g1.state_dict(), t1, g2.state_dict(), InputDeclaration.parse("flair,t1"), 1)
    with pytest.raises(InputError, match="does not read the parent's input flair"):
        widened_state(g2.state_dict(), t1flair, g1.state_dict(), t1, 1)
    with pytest.raises(InputError, match="optional input flair is required"):
        widened_state(g2.state_dict(), t1flair, g2.state_dict(), InputDeclaration.parse("t1,flair", "t1,flair"), 1)
    wider = _g(t1flair, width=8)
    with pytest.raises(InputError, match="only the input channels may differ"):
        widened_state(g1.state_dict(), t1, wider.state_dict(), t1flair, 1)
