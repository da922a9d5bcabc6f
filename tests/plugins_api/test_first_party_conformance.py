"""Every first-party loss, miner, sampler and evaluator passes hvkit's conformance kit.

Parametrised over the installed registry, so a new first-party component is checked
without editing this file; a plugin the registry lists as broken is skipped with its reason.
"""

import pytest

from .first_party import cases, check


@pytest.mark.parametrize("kind, name", cases("loss", "miner", "sampler", "evaluator"))
def test_first_party_component_keeps_the_contract(kind, name):
    check(kind, name)
