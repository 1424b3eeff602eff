"""Augmentation on the device: the random resized crop's boxes (torchvision's RandomResizedCrop rules) and the
pixels it samples."""

import torch

from saner_kernels.train.device_transforms import random_resized_crop_flip, resized_crop_boxes

torch.set_num_threads(1)


def test_boxes_follow_the_scale_and_ratio_rules():
    boxes = resized_crop_boxes(4000, 40, 60, torch.Generator().manual_seed(0))
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 40).all() and (left + w <= 60).all()
    area = h * w / (40 * 60)
    assert area.min() > 0.07 and area.max() <= 1.0  # 0.08..1 up to rounding of the sides
    aspect = w / h
    assert aspect.min() > 0.7 and aspect.max() < 1.45  # 3/4..4/3 up to rounding
    assert torch.equal(boxes, resized_crop_boxes(4000, 40, 60, torch.Generator().manual_seed(0)))


def test_no_fitting_box_falls_back_to_a_centre_crop():
    boxes = resized_crop_boxes(3, 10, 40, torch.Generator().manual_seed(0), scale=(2.0, 3.0))
    # 40/10 = 4 is wider than 4/3: the centre crop keeps the height and clamps the width to 4/3 of it
    assert boxes.tolist() == [[0.0, 13.0, 10.0, 13.0]] * 3  # width round(10 * 4/3), left (40 - 13) // 2


def test_crops_sample_the_box_pixels_and_flip_half():
    x = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    # scale 1/4 and ratio 1 of a 16x16 frame: 8x8 boxes, resampled to 8x8 pixels, i.e. copied exactly
    out = random_resized_crop_flip(x, torch.Generator().manual_seed(2), 8, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    gen = torch.Generator().manual_seed(2)  # the same draws, in the same order
    boxes = resized_crop_boxes(64, 16, 16, gen, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    flip = torch.rand(64, generator=gen) < 0.5
    assert out.shape == (64, 3, 8, 8) and out.dtype == torch.float32 and 10 < int(flip.sum()) < 54
    for i, (top, left, h, w) in enumerate(boxes.long().tolist()):
        want = x[i, :, top : top + h, left : left + w].float()
        assert (h, w) == (8, 8)
        assert torch.allclose(out[i], want.flip(2) if flip[i] else want, atol=1e-3), i


def test_full_frame_crop_is_the_image():
    x = torch.rand(5, 3, 12, 12) * 255
    out = random_resized_crop_flip(x, torch.Generator().manual_seed(0), 12, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    for i in range(5):
        assert torch.allclose(out[i], x[i], atol=1e-3) or torch.allclose(out[i], x[i].flip(2), atol=1e-3)
