"""Fixtures of the AQLM tests: the layer reference (W, H of the embedded model's layer 10 q_proj)."""
from __future__ import annotations

import pytest

from tests.methods.aqlm.layer_reference import cached_reference_exists, layer_reference


@pytest.fixture(scope="session")
def aqlm_layer_reference(request):
    """(W [576, 576] float32, H [576, 576] float64, num_samples); computed once per machine
    (loading the `embedded` model only when the cache is cold)."""
    loaded = None if cached_reference_exists() else request.getfixturevalue("embedded")
    return layer_reference(loaded)
