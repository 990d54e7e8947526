"""Fixtures of the CRVQ tests: the same layer reference as AQLM's (layers.10.self_attn.q_proj)."""
from __future__ import annotations

from tests.methods.aqlm.conftest import aqlm_layer_reference  # noqa: F401  (re-exported fixture)
