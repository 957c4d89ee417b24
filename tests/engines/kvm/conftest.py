"""Fixtures for the kvm engine tests: skip (with the probed reason) where /dev/kvm is unusable."""

from __future__ import annotations

from typing import Iterator

import pytest

from .rig import Rig, require_kvm


@pytest.fixture
def kvm_available() -> None:
    require_kvm()


@pytest.fixture
def rig(kvm_available) -> Iterator[Rig]:
    r = Rig()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def make_rig(kvm_available) -> Iterator:
    made: list[Rig] = []

    def make(**kw) -> Rig:
        r = Rig(**kw)
        made.append(r)
        return r
    try:
        yield make
    finally:
        for r in made:
            r.close()


