import torch
import torch.nn.functional as F

from pixelwise.losses import align_target, pixel_cross_entropy


def test_equals_torch_mean_without_weights():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 6)
    target = torch.randint(0, 4, (2, 5, 6))
    target[0, 0, :3] = 255
    expected = F.cross_entropy(logits, target, ignore_index=255)
    assert torch.allclose(pixel_cross_entropy(logits, target), expected)


def test_normalised_by_labelled_pixels_only():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 8, 8)
    target = torch.full((1, 8, 8), 255)
    target[0, 2, 3] = 1
    target[0, 5, 5] = 2
    nll = -F.log_softmax(logits, 1)[0]
    expected = (nll[1, 2, 3] + nll[2, 5, 5]) / 2
    assert torch.allclose(pixel_cross_entropy(logits, target), expected)


def test_class_and_pixel_weights():
    torch.manual_seed(1)
    logits = torch.randn(1, 2, 2, 2)
    target = torch.tensor([[[0, 1], [1, 255]]])
    cw = torch.tensor([1.0, 3.0])
    pw = torch.tensor([[[2.0, 1.0], [0.5, 9.0]]])
    nll = -F.log_softmax(logits, 1)[0]
    expected = (2 * nll[0, 0, 0] + 3 * nll[1, 0, 1] + 3 * 0.5 * nll[1, 1, 0]) / 3
    got = pixel_cross_entropy(logits, target, class_weights=cw, pixel_weights=pw)
    assert torch.allclose(got, expected)


def test_all_ignored_gives_zero_with_gradient():
    logits = torch.randn(1, 2, 3, 3, requires_grad=True)
    loss = pixel_cross_entropy(logits, torch.full((1, 3, 3), 255))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def test_valid_network_target_is_center_cropped():
    target = torch.arange(100).reshape(1, 10, 10)
    assert align_target(target, 6, 4).tolist() == target[:, 2:8, 3:7].tolist()


def test_valid_network_window_starts_at_the_border():
    target = torch.arange(100).reshape(1, 10, 10)
    assert align_target(target, 5, 5, border=2).tolist() == target[:, 2:7, 2:7].tolist()


def test_soft_dice_matches_a_hand_computation():
    """Batch soft Dice over labelled pixels, classes absent from both sides left out."""
    import numpy as np

    from pixelwise.losses import soft_dice_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=g)
    target = torch.randint(0, 3, (2, 5, 6), generator=g)  # class 3 never in the labels
    target[0, 0, :3] = 255
    p = torch.softmax(logits, 1).numpy()
    t = target.numpy()
    lab = t != 255
    dices = []
    for c in range(4):
        pc, tc = p[:, c] * lab, (t == c) & lab
        total = pc.sum() + tc.sum()
        if total > 0:
            dices.append((2 * (pc * tc).sum() + 1e-5) / (total + 1e-5))
    expected = 1 - np.mean(dices)
    got = soft_dice_loss(logits, target)
    assert abs(float(got) - expected) < 1e-6


def test_soft_dice_is_zero_for_certain_right_answers_and_has_gradients():
    from pixelwise.losses import soft_dice_loss

    target = torch.tensor([[[0, 1], [2, 255]]])
    logits = torch.nn.functional.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2) * 50.0
    assert float(soft_dice_loss(logits.float(), target)) < 1e-6
    wrong = logits.flip(1).float().requires_grad_()
    loss = soft_dice_loss(wrong, target)
    loss.backward()
    assert float(loss) > 0.5 and wrong.grad.abs().sum() > 0
    assert float(soft_dice_loss(wrong, torch.full_like(target, 255))) == 0.0


def test_crf_loss_wants_labels_to_follow_the_image_edges():
    """Zero for one label everywhere; a label edge costs little where the image has an edge and
    much across flat intensity; and a click's gradient spreads to its own side of an edge."""
    from pixelwise.losses import crf_loss

    image = torch.zeros(1, 1, 32, 32)
    image[..., 16:] = 200.0  # dark left half, bright right half
    one = torch.zeros(1, 2, 32, 32)
    one[:, 0] = 10.0
    assert crf_loss(one, image).item() < 1e-3
    split = torch.zeros(1, 2, 32, 32)
    split[:, 0, :, :16], split[:, 1, :, 16:] = 10.0, 10.0
    shifted = split.roll(8, dims=3)  # the label edge at column 8, in the flat dark half
    assert crf_loss(shifted, image).item() > 10 * crf_loss(split, image).item()
    logits = torch.zeros(1, 2, 32, 32, requires_grad=True)
    with torch.no_grad():
        logits[:, 1, 10:14, 2:6] = 5.0  # a confident class-1 click in the dark half
    crf_loss(logits, image, stride=1).backward()
    # lowering the loss means raising class 1 next to the click, not across the edge
    assert logits.grad[0, 1, 12, 8] < 0 and logits.grad[0, 1, 12, 24].abs() < 1e-6


def test_the_crf_colour_scale_follows_each_images_contrast():
    """``sigma_color=None`` measures each image's neighbour differences: the same edge picture
    at a quarter of the contrast gets a quarter of the bandwidth, so its label edge costs what
    it costs at full contrast, where a fixed bandwidth of 15 counts the faint edge as flatter."""
    from pixelwise.losses import contrast_scale, crf_loss

    rng = torch.Generator().manual_seed(0)
    strong = torch.zeros(2, 1, 32, 32)
    strong[..., 16:] = 200.0
    strong = strong + 60 * torch.rand(2, 1, 32, 32, generator=rng)
    faint = strong / 4
    scales = contrast_scale(torch.cat([strong, faint]))
    assert scales.shape == (4,) and torch.allclose(scales[:2], 4 * scales[2:], rtol=1e-4)
    assert contrast_scale(torch.zeros(1, 3, 8, 8)).item() == 1.0  # a flat image: the floor
    split = torch.zeros(2, 2, 32, 32)
    split[:, 0, :, :16], split[:, 1, :, 16:] = 10.0, 10.0
    auto = [crf_loss(split, image, sigma_color=None).item() for image in (strong, faint)]
    assert abs(auto[1] - auto[0]) < 1e-3 * auto[0]
    assert crf_loss(split, faint).item() > 5 * crf_loss(split, strong).item()


def test_soft_cross_entropy_of_one_hot_targets_is_the_cross_entropy():
    """One-hot soft labels give the plain cross-entropy; a mask averages over its pixels only
    (none: 0, still differentiable)."""
    from pixelwise.losses import soft_cross_entropy

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, requires_grad=True)
    labels = torch.randint(0, 3, (2, 4, 5))
    one_hot = F.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    assert torch.allclose(soft_cross_entropy(logits, one_hot), F.cross_entropy(logits, labels))
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[0, :2] = True
    nll = F.cross_entropy(logits, labels, reduction="none")
    assert torch.allclose(soft_cross_entropy(logits, one_hot, mask), nll[mask].mean())
    none = soft_cross_entropy(logits, one_hot, torch.zeros_like(mask))
    none.backward()
    assert float(none) == 0.0 and logits.grad is not None
