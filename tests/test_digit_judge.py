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


def test_the_judge_is_the_same_whatever_the_random_state(real_digits, tmp_path):
    """Trained from the seed alone (initial weights included): a test worker, the runner and a plain process train the
    same judge from the same files, so a learning test's classes do not depend on where its judge was trained."""
    import shutil
    from benchmarks.digits import DigitJudge
    nets = []
    for state in (1, 2):
        folder = tmp_path / str(state)
        shutil.copytree(real_digits / "MNIST", folder / "MNIST")  # copy2: the same file times, the cache's key
        torch.manual_seed(state)  # whatever ran before in this process
        nets.append(DigitJudge.load(folder, size=16, steps=3, verbose=False).net.state_dict())
    assert all(torch.equal(nets[0][k], nets[1][k]) for k in nets[0])
