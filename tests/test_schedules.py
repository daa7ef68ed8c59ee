from __future__ import annotations

import pytest

from lib_vidguide.schedules import PRESETS, Schedule, ScheduleError, parse_schedule


def test_seed_showcase_is_the_seed_schedule():
    schedule = parse_schedule("seed_showcase")
    assert [schedule(p) for p in (0.0, 0.5, 0.79, 0.8, 0.9, 1.0)] == [0.6, 0.6, 0.6, 0.4, 0.4, 0.4]


def test_piecewise_linear_between_points_and_constant_outside():
    schedule = parse_schedule("0.2:1, 0.6:0")
    assert schedule(0.0) == 1.0
    assert schedule(0.4) == pytest.approx(0.5)
    assert schedule(0.6) == 0.0
    assert schedule(2.0) == 0.0
    assert schedule(-1.0) == 1.0


def test_single_number_is_a_constant_schedule():
    assert parse_schedule("0.3")(0.7) == 0.3


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_by_name(name):
    schedule = parse_schedule(name.upper())
    assert schedule.to_text() == name
    assert parse_schedule(schedule.to_text()).points == schedule.points


def test_table_text_round_trips():
    schedule = parse_schedule(" 0:0.25 ; 0.5:0.75, 1:0.1 ")
    assert schedule.to_text() == "0:0.25, 0.5:0.75, 1:0.1"
    assert parse_schedule(schedule.to_text()) == schedule


@pytest.mark.parametrize(
    "text, message",
    [
        ("__import__('os').system('true')", "progress:weight"),
        ("lambda p: 1", "progress:weight"),
        ("0:0.5, 0.3:nan", "two numbers"),
        ("0:1.5", "outside [0, 1]"),
        ("0.5:1, 0.2:0", "must not decrease"),
        ("", "empty schedule"),
        ("1.5:0.2", "outside [0, 1]"),
    ],
)
def test_bad_schedules_are_explained(text, message):
    with pytest.raises(ScheduleError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_schedule(text)


def test_zero_schedule_is_detected():
    assert parse_schedule("0:0, 1:0").is_zero
    assert not parse_schedule("constant").is_zero


def test_pairs_are_accepted():
    assert parse_schedule([(0, 1), (1, 0.5)]) == Schedule(((0.0, 1.0), (1.0, 0.5)))
