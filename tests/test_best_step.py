"""The best-step and auto-stop rules: pure functions, with their edge cases."""

from training.best_step import ScorePoint, auto_stop_reason, suggest_best


def points(*rows):
    return [ScorePoint(step, like, edit) for step, like, edit in rows]


def test_highest_likeness_among_those_keeping_editability():
    pts = points((100, 0.50, 0.30), (200, 0.70, 0.28), (300, 0.90, 0.20), (400, 0.95, 0.10))
    s = suggest_best(pts, baseline_editability=0.30, threshold=0.9)  # floor 0.27
    assert s.step == 200 and s.kept == (100, 200)
    assert "highest likeness (0.700)" in s.words and "90%" in s.words and "0.270 of 0.300" in s.words
    # a lower threshold lets a later, less editable step win
    assert suggest_best(pts, 0.30, threshold=0.6).step == 300


def test_tie_goes_to_the_earlier_step():
    pts = points((300, 0.8, 0.3), (100, 0.8, 0.3), (200, 0.8, 0.3))
    assert suggest_best(pts, 0.3, 0.9).step == 100


def test_all_below_threshold_suggests_the_most_editable_and_says_so():
    pts = points((100, 0.5, 0.10), (200, 0.9, 0.05), (300, 0.6, 0.12))
    s = suggest_best(pts, baseline_editability=0.30, threshold=0.9)
    assert s.step == 300 and s.kept == ()
    assert "no snapshot keeps 90%" in s.words and "most editable" in s.words


def test_one_snapshot_and_none():
    assert suggest_best(points((500, 0.4, 0.3)), 0.3, 0.9).step == 500
    assert "the only snapshot" in suggest_best(points((500, 0.4, 0.3)), 0.3, 0.9).words
    empty = suggest_best([], 0.3, 0.9)
    assert empty.step is None and "evaluate" in empty.words


def test_without_a_baseline_highest_likeness_said_so():
    s = suggest_best(points((100, 0.5, 0.1), (200, 0.6, 0.0)), None, 0.9)
    assert s.step == 200 and "not compared" in s.words


def test_threshold_edges():
    pts = points((100, 0.5, 0.3), (200, 0.9, 0.0))
    assert suggest_best(pts, 0.3, 0.0).step == 200  # 0: editability does not matter
    assert suggest_best(pts, 0.3, 1.0).step == 100  # 1: must keep all of it (equal counts)


def test_auto_stop_after_patience_without_improvement():
    hist = [(1, 0.2), (2, 0.3), (3, 0.29), (4, 0.3)]
    assert auto_stop_reason(hist, 3, "likeness") is None  # two evaluations since the best
    reason = auto_stop_reason([*hist, (5, 0.1)], 3, "likeness")
    assert reason and "likeness has not improved for 3 evaluations" in reason and "step 2" in reason


def test_auto_stop_no_improvement_from_the_start():
    hist = [(10, 1.0), (20, 0.9), (30, 0.8)]
    assert auto_stop_reason(hist[:2], 2, "editability") is None
    assert "best 1 at step 10" in auto_stop_reason(hist, 2, "editability")


def test_auto_stop_eval_loss_lower_is_better_and_noise_is_no_improvement():
    falling = [(i, 1.0 / i) for i in range(1, 8)]
    assert auto_stop_reason(falling, 2, "eval_loss") is None
    flat = [(1, 0.5), (2, 0.5 * (1 - 1e-9)), (3, 0.5 * (1 - 2e-9))]  # float noise of unchanged vectors
    assert "eval loss has not improved for 2" in auto_stop_reason(flat, 2, "eval_loss")
    assert auto_stop_reason([(1, 0.5)], 1, "eval_loss") is None  # the first evaluation only sets the mark
