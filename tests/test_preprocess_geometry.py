"""Golden geometry: sizes and boxes worked out by hand from the rules in the docstrings."""

import numpy as np
import pytest
from PIL import Image

from preprocessing.geometry import (
    apply_plan,
    effective_target,
    focal_box,
    mirror,
    plan_crops,
    plan_split,
)
from tests.preprocess_fixtures import BLUE, RED, halves


def test_center_crop_scales_to_cover_then_cuts_the_middle():
    # 800x600 -> scale max(512/800, 512/600) = 0.8533 -> 683x512, middle 512 columns start at (683-512)//2 = 85
    plan = plan_crops(800, 600, 512, 512, mode="center")
    assert plan.resize_to == (683, 512)
    assert plan.boxes == [(85, 0, 597, 512)]
    assert not plan.small
    # non-square target: 1000x1000 -> 768x512 target covers at 0.768 -> 768x768, rows (768-512)//2 = 128
    plan = plan_crops(1000, 1000, 768, 512, mode="center")
    assert plan.resize_to == (768, 768)
    assert plan.boxes == [(0, 128, 768, 640)]


def test_fit_keeps_the_whole_picture_at_the_target_area_in_multiples_of_8():
    # 800x600 -> scale sqrt(512*512 / 480000) = 0.7390 -> 591x443, trimmed to 584x440, centred
    plan = plan_crops(800, 600, 512, 512, mode="fit")
    assert plan.resize_to == (591, 443) and plan.boxes == [(3, 1, 587, 441)]
    # 1000x333 -> scale sqrt(262144 / 333000) = 0.8873 -> 887x295, trimmed to 880x288
    plan = plan_crops(1000, 333, 512, 512, mode="fit")
    assert plan.resize_to == (887, 295) and plan.boxes == [(3, 3, 883, 291)]


def test_small_images_are_not_upscaled_unless_asked():
    # 300x200 would need x2.56; instead the target shrinks to 200x200 at native resolution
    assert effective_target(300, 200, 512, 512, upscale=False) == (200, 200, True)
    plan = plan_crops(300, 200, 512, 512, mode="center")
    assert plan.small and plan.resize_to == (300, 200) and plan.boxes == [(50, 0, 250, 200)]
    up = plan_crops(300, 200, 512, 512, mode="center", upscale=True)
    assert not up.small and up.resize_to == (768, 512) and up.boxes == [(128, 0, 640, 512)]
    fit = plan_crops(300, 200, 512, 512, mode="fit")
    assert fit.small and fit.resize_to == (300, 200) and fit.boxes == [(2, 0, 298, 200)]


def test_split_follows_a1111_rule():
    # tall 300x800 at 256: short side -> 256, long side 800*256//300 = 682;
    # count = ceil((682 - 256*0.2) / (256*0.8)) = ceil(3.08) = 4, step (682-256)/3 = 142
    plan = plan_crops(300, 800, 256, 256, split=True)
    assert plan.kind == "split" and plan.resize_to == (256, 682)
    assert plan.boxes == [(0, 0, 256, 256), (0, 142, 256, 398), (0, 284, 256, 540), (0, 426, 256, 682)]
    # wide 1500x600 at 512: ratio 0.4 <= 0.5; long 1500*512//600 = 1280;
    # count = ceil((1280 - 102.4) / 409.6) = 3, step (1280-512)/2 = 384
    plan = plan_crops(1500, 600, 512, 512, split=True)
    assert plan.resize_to == (1280, 512) and not plan.small
    assert plan.boxes == [(0, 0, 512, 512), (384, 0, 896, 512), (768, 0, 1280, 512)]
    # no overlap: ceil(1280/512) = 3 windows, same spread
    assert plan_split(1500, 600, 512, 512, overlap=0.0).boxes == plan.boxes
    # 1000x400 is too short for 512 windows: without upscaling they shrink to 400 (native pixels);
    # count = ceil((1000 - 80) / 320) = 3, step 300
    small = plan_crops(1000, 400, 512, 512, split=True)
    assert small.small and small.resize_to == (1000, 400)
    assert small.boxes == [(0, 0, 400, 400), (300, 0, 700, 400), (600, 0, 1000, 400)]


def test_split_is_only_for_oversized_aspect():
    assert plan_split(600, 400, 512, 512) is None  # ratio 0.67 > 0.5
    assert plan_crops(600, 400, 512, 512, split=True).kind == "center"
    assert plan_split(600, 400, 512, 512, threshold=0.7) is not None
    # normalised by the target aspect: 1024x512 is exactly the shape of a 1024x512 target
    assert plan_split(1024, 512, 1024, 512, threshold=1.0) is None


def test_split_count_one_edge_case_gives_one_centred_window():
    # 1000x999 at threshold 1: long side 1000*512//999 = 512 = target, A1111 divides by zero (count 1)
    plan = plan_split(1000, 999, 512, 512, threshold=1.0)
    assert plan is not None and plan.resize_to == (512, 512) and plan.boxes == [(0, 0, 512, 512)]


def test_apply_plan_gives_boxes_of_target_size():
    img = halves((300, 800), RED, BLUE)
    plan = plan_crops(300, 800, 256, 256, split=True)
    crops = apply_plan(img, plan)
    assert [c.size for c in crops] == [(256, 256)] * 4
    assert plan.output_sizes == [(256, 256)] * 4


def test_focal_crop_follows_the_detail():
    g = np.full((200, 600), 128, dtype=np.uint8)
    g[:, 430:560] = np.random.default_rng(1).integers(0, 256, (200, 130), dtype=np.uint8)
    img = Image.fromarray(g).convert("RGB")
    left, top, right, bottom = focal_box(img, 200, 200)
    assert (top, bottom, right - left) == (0, 200, 200)
    assert left <= 430 and right >= 560  # the whole detailed patch is inside the window
    # vertical: patch near the top of a tall image
    t = np.full((600, 200), 90, dtype=np.uint8)
    t[20:120, :] = np.random.default_rng(2).integers(0, 256, (100, 200), dtype=np.uint8)
    box = focal_box(Image.fromarray(t).convert("RGB"), 200, 200)
    assert box[0] == 0 and box[1] <= 20 and box[3] >= 120


def test_focal_crop_of_a_flat_image_is_the_centre():
    assert focal_box(Image.new("RGB", (600, 200), (40, 50, 60)), 200, 200) == (200, 0, 400, 200)


def test_mirror_flips_left_and_right():
    m = mirror(halves((10, 4), RED, BLUE))
    assert m.getpixel((0, 0)) == BLUE and m.getpixel((9, 3)) == RED


def test_unknown_crop_mode_is_named():
    with pytest.raises(ValueError, match="crop mode 'zoom'"):
        plan_crops(10, 10, 8, 8, mode="zoom")
