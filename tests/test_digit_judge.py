"""The judge of the learning tests (benchmarks.digits) on sets with known answers: real held-out digits pass
the learning tests' bar; noise, a blank image, one class, three classes and blurred digits fail it."""
import pytest
import torch
import torch.nn.functional as F

from benchmarks.digits import read_mnist_split
from helpers import digits_pass

pytestmark = pytest.mark.slow  # with the learning tests, which need the same judge (about 45 s to train once)


def held_out(folder, size=16):
    return read_mnist_split(folder, False, size)


def test_real_digits_pass_and_follow_their_labels(real_digits, digit_judge):
    x, y = held_out(real_digits)
    s = digit_judge.score(x, y)
    print(s)
    assert digit_judge.accuracy > 0.95
    assert digits_pass(s) and s["covered"] == 10 and s["confident"] > 0.9
    assert s["label_acc"] > 0.95
    assert digit_judge.score(x, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))])["label_acc"] < 0.3
    assert digit_judge.score(read_mnist_split(real_digits, True, 32)[0][:300])["covered"] == 10  # any size: resized


def test_noise_blank_collapsed_and_blurred_sets_fail(real_digits, digit_judge):
    x, y = held_out(real_digits)
    g = torch.Generator().manual_seed(0)
    cases = {
        "uniform noise": torch.rand(300, 1, 16, 16, generator=g) * 2 - 1,
        "blank": torch.full((300, 1, 16, 16), -1.0),
        "one class": x[y == 3][:30].repeat(10, 1, 1, 1),
        "three classes": x[(y == 0) | (y == 1) | (y == 7)],
        "blurred": F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False),
    }
    for name, images in cases.items():
        s = digit_judge.score(images)
        print(f"{name}: FD {s['fd']:.1f}, {s['covered']} classes, {s['confident']:.0%} confident")
        assert not digits_pass(s), (name, s)
    assert digit_judge.score(cases["one class"])["covered"] == 1
    assert digit_judge.score(cases["three classes"])["covered"] == 3
