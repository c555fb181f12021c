"""The time-left estimate that population tasks log after each result."""

from ptmz.progress import remaining


def test_time_left_is_the_pace_so_far_times_the_units_left():
    assert remaining(3, 12, 90.0) == "3/12, about 4 min 30 s left"
    assert remaining(1, 400, 30.0) == "1/400, about 3 h 19 min left"
    assert remaining(12, 12, 500.0) == "12/12"
