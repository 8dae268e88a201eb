"""Learning-rate schedules: A1111's stepped syntax exactly, plus constant/cosine/linear with warm-up."""

import math

import pytest

from training.schedule import ScheduleError, build_clip_schedule, build_schedule, parse_stepped


# Every row was checked against A1111's own parser.
@pytest.mark.parametrize(
    "text,max_steps,cur,expected",
    [
        ("0.01:100, 0.001:1000, 1e-5:10000", 500, 0, [(0.01, 100), (0.001, 500)]),
        ("0.01:100,0.001:-1, 5e-4:3000", 4000, 0, [(0.01, 100), (0.001, 4000)]),
        ("0.01:100, 0.001:1000", 2000, 200, [(0.001, 1000)]),
        (" 0.01 : 100 , ,0.001", 1000, 0, [(0.01, 100), (0.001, 1000)]),
    ],
)
def test_a1111_table(text, max_steps, cur, expected):
    assert parse_stepped(text, max_steps, cur) == expected


@pytest.mark.parametrize(
    "text,max_steps,cur,expected",
    [
        ("0.005", 300, 0, [(0.005, 300)]),
        # a bare rate ends parsing: what follows is ignored
        ("0.005, 0.001:500", 1000, 0, [(0.005, 1000)]),
        ("0.01:100, 0.002, 0.001:500", 1000, 0, [(0.01, 100), (0.002, 1000)]),
        # three parts read as a bare rate, and parsing stops
        ("0.1:10:20, 0.5:30", 100, 0, [(0.1, 100)]),
        # a step exactly at max steps does not stop parsing (A1111 keeps reading)
        ("0.01:100, 0.001:200", 100, 0, [(0.01, 100), (0.001, 100)]),
        # step == cur is passed already
        ("0.01:100, 0.001:300", 1000, 100, [(0.001, 300)]),
        # a negative step other than -1 is silently dropped
        ("0.01:-5, 0.001:300", 1000, 0, [(0.001, 300)]),
        # -1 ends parsing
        ("0.01:-1, 0.001:300", 1000, 0, [(0.01, 1000)]),
        ("1e-3:50", 100, 0, [(0.001, 50)]),
    ],
)
def test_more_stepped_cases(text, max_steps, cur, expected):
    assert parse_stepped(text, max_steps, cur) == expected


@pytest.mark.parametrize(
    "text,needle",
    [
        ("0.01:0", "nothing to do"),
        ("abc", "not a number"),
        ("0.01:10.5", "not a whole number"),
        ("", "empty"),
        ("   ", "empty"),
        (" , ,", "nothing to do"),
        ("-0.01", "> 0"),
        ("-0.01:100", "> 0"),
        ("0:100", "> 0"),
        ("nan", "finite"),
        ("inf:100", "finite"),
        ("0.01:x", "not a whole number"),
        ("0.01:100, 0.001:50", "increase"),
    ],
)
def test_stepped_errors_say_why_and_show_syntax(text, needle):
    with pytest.raises(ScheduleError) as err:
        parse_stepped(text, 1000)
    assert needle in str(err.value)
    if needle in ("not a number", "not a whole number", "empty", "nothing to do"):
        assert "rate:step" in str(err.value)


def test_error_names_the_bad_piece():
    with pytest.raises(ScheduleError, match="'0.001:1o0'"):
        parse_stepped("0.01:10, 0.001:1o0", 1000)


def test_stepped_value_at_and_end():
    s = build_schedule("stepped", "0.01:100, 0.001:1000", 2000)
    assert s.value_at(0) == 0.01
    assert s.value_at(99) == 0.01
    assert s.value_at(100) == 0.001
    assert s.value_at(999) == 0.001
    # the schedule ending ends training, even with max steps 2000
    assert s.end_step == 1000
    assert s.value_at(1000) is None


def test_resume_gives_same_values_after_the_resume_step():
    full = build_schedule("stepped", "0.05:10, 0.02:20, 0.01:-1", 40, cur_step=0)
    resumed = build_schedule("stepped", "0.05:10, 0.02:20, 0.01:-1", 40, cur_step=15)
    assert resumed.segments == [(0.02, 20), (0.01, 40)]
    assert [full.value_at(s) for s in range(15, 41)] == [resumed.value_at(s) for s in range(15, 41)]
    assert resumed.notes and "dropped" in resumed.notes[0]


def test_ignored_pieces_are_reported():
    s = build_schedule("stepped", "0.005, 0.001:500", 1000)
    assert any("ignored" in n and "0.001:500" in n for n in s.notes)


def test_cosine_with_warmup_matches_formula():
    base, min_lr, T, W = 0.01, 0.001, 110, 10
    s = build_schedule("cosine", "1e-2", T, warmup_steps=W, min_lr=min_lr)
    for k in range(W):
        assert s.value_at(k) == pytest.approx(base * (k + 1) / W)
    for step in (10, 35, 60, 85, 109):
        p = (step - W) / (T - W)
        assert s.value_at(step) == pytest.approx(min_lr + (base - min_lr) * 0.5 * (1 + math.cos(math.pi * p)))
    assert s.value_at(60) == pytest.approx((base + min_lr) / 2)  # half-way is the mid value
    assert s.value_at(T) is None
    assert s.end_step == T


def test_linear_and_constant():
    lin = build_schedule("linear", "0.02", 100, warmup_steps=0)
    assert lin.value_at(0) == pytest.approx(0.02)
    assert lin.value_at(50) == pytest.approx(0.01)
    assert lin.value_at(75) == pytest.approx(0.005)
    const = build_schedule("constant", "0.02", 100, warmup_steps=4)
    assert [const.value_at(k) for k in range(6)] == pytest.approx([0.005, 0.01, 0.015, 0.02, 0.02, 0.02])
    assert const.value_at(100) is None


def test_curves_start_at_cur_step():
    """The curve's origin is cur_step: pass the original run's start step to resume exactly."""
    s = build_schedule("linear", "0.02", 300, cur_step=100, warmup_steps=0)
    assert s.value_at(100) == pytest.approx(0.02)
    assert s.value_at(200) == pytest.approx(0.01)


@pytest.mark.parametrize(
    "kind,text,kwargs,needle",
    [
        ("cosine", "0.01:100, 0.001:-1", {}, "stepped schedule"),
        ("linear", "", {}, "empty"),
        ("constant", "fast", {}, "not a number"),
        ("cosine", "0.01", {"warmup_steps": -1}, "warmup_steps"),
        ("cosine", "0.01", {"min_lr": 0.1}, "larger"),
        ("cosine", "0.01", {"min_lr": float("nan")}, "min_lr"),
        ("stepped", "0.01", {"warmup_steps": 5}, "not stepped"),
        ("exponential", "0.01", {}, "unknown"),
    ],
)
def test_build_errors(kind, text, kwargs, needle):
    with pytest.raises(ScheduleError, match=needle):
        build_schedule(kind, text, 100, **kwargs)


def test_steps_must_be_ints():
    with pytest.raises(ScheduleError, match="max_steps"):
        build_schedule("stepped", "0.01", 10.5)


def test_clip_schedule_keeps_last_value_and_never_ends():
    c = build_clip_schedule("0.5:10, 0.1:20", 100)
    assert c.value_at(0) == 0.5
    assert c.value_at(15) == 0.1
    assert c.value_at(20) == 0.1
    assert c.value_at(5000) == 0.1
    assert c.end_step == 100
    with pytest.raises(ScheduleError, match="clip-value"):
        build_clip_schedule("x", 100)


def test_points_show_each_jump_and_stay_bounded():
    s = build_schedule("stepped", "0.05:10, 0.02:20, 0.01:-1", 100000)
    pts = s.points(50)
    assert len(pts) <= 60
    d = dict(pts)
    assert d[0] == 0.05 and d[9] == 0.05 and d[10] == 0.02 and d[19] == 0.02 and d[20] == 0.01
    assert pts[-1] == (99999, 0.01)
    steps = [p[0] for p in pts]
    assert steps == sorted(set(steps))
    small = build_schedule("cosine", "0.01", 20, warmup_steps=5).points(200)
    assert [p[0] for p in small] == list(range(20))
    assert all(p[1] > 0 for p in small)
    resumed = build_schedule("stepped", "0.01", 100, cur_step=40).points()
    assert resumed[0][0] == 40
    assert build_schedule("stepped", "0.01:10", 100, cur_step=0).points()[-1][0] == 9
