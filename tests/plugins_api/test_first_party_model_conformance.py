"""Every first-party backbone, head and transform passes hvkit's conformance kit (see first_party.py)."""

import pytest

from .first_party import cases, check


@pytest.mark.parametrize("kind, name", cases("backbone", "head", "transform"))
def test_first_party_component_keeps_the_contract(kind, name):
    check(kind, name)
