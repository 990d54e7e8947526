"""`harness.testing.check_quantizer`: the built-in methods and the README's toy plugin pass it;
quantizers that break one promise each fail it with a message naming the promise."""
from __future__ import annotations

import sys

import pytest
import torch

from harness.registry import get_method
from harness.testing import check_quantizer
from methods.common.intlayer import GroupIntLinear
from methods.rtn import RTNQuantizer
from tests.fixtures.toy_plugin import SignLinear, ToyQuantizer

#: Small settings: a few iterations, codebooks small enough for a [32, 64] layer.
FAST: dict[str, tuple[int | None, dict]] = {
    "none": (None, {}),
    "rtn": (4, {}),
    "gptq": (3, {"group_size": 32}),
    "aqlm": (None, {"num_codebooks": 2, "nbits_per_codebook": 4, "in_group_size": 8, "max_epochs": 2,
                    "steps_per_epoch": 3, "kmeans_iters": 3}),
    "crvq": (None, {"nbits": 4, "extended_nbits": 4, "num_extended_codebooks": 1, "critical_ratio": 0.25,
                    "max_epochs": 2, "steps_per_epoch": 3, "kmeans_iters": 3, "importance_kmeans_iters": 3}),
}


@pytest.mark.parametrize("name", sorted(FAST))
def test_builtin_methods_pass(name):
    budget, params = FAST[name]
    check_quantizer(get_method(name), budget=budget, params=params)


def test_gptq_act_order_passes():
    check_quantizer(get_method("gptq"), budget=4, params={"group_size": 16, "act_order": True})


def test_the_readme_toy_plugin_passes():
    check_quantizer(ToyQuantizer, budget=1)


class _OffByOneBit(SignLinear):
    @classmethod
    def bits_per_weight(cls, shape, config):
        bits, paper = super().bits_per_weight(shape, config)
        return bits + 1, paper + 1


class _LosesScale(SignLinear):
    def __init__(self, in_features, out_features, bias=None):
        super().__init__(in_features, out_features, bias)
        del self.scale  # the buffer is not saved: the reload has no scale
        self.scale = torch.zeros(out_features, 1, dtype=torch.float16)


class _ForwardIgnoresScale(SignLinear):
    def forward(self, x):
        return torch.nn.functional.linear(x, self.signs.float() * 2 - 1, self.bias)


def _toy(layer_cls: type[SignLinear], **attrs) -> type[ToyQuantizer]:
    def quantize_linear(self, linear, stats, ctx):
        layer = ToyQuantizer.quantize_linear(self, linear, stats, ctx)
        broken = layer_cls(layer.in_features, layer.out_features, layer.bias)
        broken.signs.copy_(layer.signs)
        broken.scale.copy_(layer.scale)
        return broken

    return type("Broken", (ToyQuantizer,), {"layer_class": layer_cls, "quantize_linear": quantize_linear, **attrs})


class _AcceptsAnything(ToyQuantizer.Config):
    model_config = {"extra": "allow", "frozen": True}


class _InPlace(ToyQuantizer):
    def quantize_linear(self, linear, stats, ctx):
        layer = super().quantize_linear(linear, stats, ctx)
        linear.weight.data.zero_()
        return layer


@pytest.mark.parametrize(
    "broken, message",
    [
        (_toy(SignLinear, bits_for_shape=lambda self, out, inp: (1 + 16 / inp + 1, 1 + 16 / inp)), "bits_for_shape"),
        (_toy(_OffByOneBit), "stored tensors count 1.25 bits per weight, formula_bits\\(\\) says 2.25"),
        (_toy(_LosesScale), "not in the layer's state_dict"),
        (_toy(_ForwardIgnoresScale), "disagrees with x Ŵᵀ \\+ b"),
        (_toy(SignLinear, Config=_AcceptsAnything), "accepts the unknown param"),
        (_toy(SignLinear, budget_presets={1: {"no_such_field": 3}}), "preset of budget 1 does not validate"),
        (_InPlace, "modified the input layer's weight"),
    ],
)
def test_a_broken_quantizer_fails_with_a_clear_message(broken, message):
    with pytest.raises(AssertionError, match=message):
        check_quantizer(broken, budget=None)


def test_a_reload_that_loses_a_tensor_fails():
    """A layer whose `format_config` forgets a constructor argument reloads with other buffers."""

    class _ForgetsGroups(GroupIntLinear):
        def format_config(self):
            return {**super().format_config(), "group_size": -1}

    class _Rtn(RTNQuantizer):
        def quantize_linear(self, linear, stats, ctx):
            layer = super().quantize_linear(linear, stats, ctx)
            broken = _ForgetsGroups.from_layer_config(layer.layer_config())
            broken.load_state_dict(layer.state_dict())
            return broken

    with pytest.raises(AssertionError, match="does not reload"):
        check_quantizer(_Rtn, budget=4)


def test_the_readme_example_passes(monkeypatch):
    """The method of README "Adding a method", run as written (as module `my_method`)."""
    import types
    from pathlib import Path

    readme = Path(__file__).resolve().parents[2] / "README.md"
    section = readme.read_text().split("## Adding a method", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    module = types.ModuleType("my_method")
    monkeypatch.setitem(sys.modules, "my_method", module)
    exec(compile(code, "README.md (Adding a method)", "exec"), module.__dict__)
    check_quantizer(module.SignQuantizer, budget=1)
