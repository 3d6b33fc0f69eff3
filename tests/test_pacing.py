"""StepSizer: steps sized from the speed of the last one, within bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2paid.core.pacing import StepSizer


def test_a_step_that_took_twice_the_target_halves_the_next() -> None:
    sizer = StepSizer(0.010, first=256, minimum=32, maximum=8192)
    sizer.record(256, 0.020)
    assert sizer.size == 128
    sizer.record(128, 0.005)
    assert sizer.size == 256


def test_a_fixed_cost_per_call_is_learnt_from_below() -> None:
    """Work of 3 ms per call plus 10 us per item, aiming at 15 ms: the size grows
    towards the 1,200 items that fit, and never overshoots by more than it measures."""
    sizer = StepSizer(0.015, first=256, minimum=32, maximum=8192)
    for _ in range(10):
        sizer.record(sizer.size, 0.003 + 0.00001 * sizer.size)
    assert 1_100 <= sizer.size <= 1_200


def test_a_short_last_step_teaches_nothing() -> None:
    sizer = StepSizer(0.010, first=256, minimum=32, maximum=8192)
    sizer.record(3, 0.0001)  # the work ran out after 3 items
    assert sizer.size == 256


@given(st.floats(1e-4, 1.0), st.integers(1, 10_000), st.floats(1e-7, 10.0))
def test_the_size_stays_within_its_bounds(target: float, items: int, seconds: float) -> None:
    sizer = StepSizer(target, first=64, minimum=16, maximum=4096)
    sizer.record(items, seconds)
    assert 16 <= sizer.size <= 4096


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError):
        StepSizer(0.01, first=8, minimum=16, maximum=4096)
    with pytest.raises(ValueError):
        StepSizer(0.0, first=64, minimum=16, maximum=4096)
