"""The judge of the learning tests (benchmarks.digits) on sets with known answers: real held-out images (Fashion-MNIST,
or scikit-learn's digits without it) pass the learning tests' bar; noise, a blank image, one class, three classes and
blurred images fail it."""
import pytest
import torch
import torch.nn.functional as F

from benchmarks.digits import DATASETS, dataset_in, read_mnist_split
from helpers import digits_pass

pytestmark = pytest.mark.slow  # with the learning tests, which need the same judge (about 45 s to train once)


def held_out(folder, size=16):
    return read_mnist_split(folder, False, size, dataset_in(folder))


def test_real_digits_pass_and_follow_their_labels(real_images, judge):
    x, y = held_out(real_images)
    s = judge.score(x, y)
    print(s)
    fashion = dataset_in(real_images) == "fashion_mnist"  # shirts, T-shirts and pullovers look alike at 16x16
    assert judge.accuracy > (0.8 if fashion else 0.95)
    assert digits_pass(s) and s["covered"] == 10 and s["confident"] > (0.6 if fashion else 0.9)
    assert s["label_acc"] > (0.8 if fashion else 0.95)
    assert judge.score(x, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))])["label_acc"] < 0.3
    assert judge.score(read_mnist_split(real_images, True, 32, dataset_in(real_images))[0][:300])["covered"] == 10  # any size: resized


def test_noise_blank_collapsed_and_blurred_sets_fail(real_images, judge):
    x, y = held_out(real_images)
    g = torch.Generator().manual_seed(0)
    # classes that do not look alike: digits 0, 1, 7; trousers, sneakers, bags (Fashion-MNIST's dresses pass for coats)
    three = (1, 7, 8) if dataset_in(real_images) == "fashion_mnist" else (0, 1, 7)
    cases = {
        "uniform noise": torch.rand(300, 1, 16, 16, generator=g) * 2 - 1,
        "blank": torch.full((300, 1, 16, 16), -1.0),
        "one class": x[y == 1][:30].repeat(10, 1, 1, 1),
        "three classes": x[sum(y == c for c in three).bool()],
        "blurred": F.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False),
    }
    for name, images in cases.items():
        s = judge.score(images)
        print(f"{name}: FD {s['fd']:.1f}, {s['covered']} classes, {s['confident']:.0%} confident")
        assert not digits_pass(s), (name, s)
    assert judge.score(cases["one class"])["covered"] == 1
    assert judge.score(cases["three classes"])["covered"] == 3


def test_the_judge_is_the_same_whatever_the_random_state(real_images, tmp_path):
    """Trained from the seed alone (initial weights included): a test worker, the runner and a plain process train the
    same judge from the same files, so a learning test's classes do not depend on where its judge was trained."""
    import shutil
    from benchmarks.digits import DigitJudge
    nets = []
    for state in (1, 2):
        folder = tmp_path / str(state)
        layout = DATASETS[dataset_in(real_images)]
        shutil.copytree(real_images / layout, folder / layout)  # copy2: the same file times, the cache's key
        torch.manual_seed(state)  # whatever ran before in this process
        nets.append(DigitJudge.load(folder, size=16, steps=3, verbose=False, dataset=dataset_in(folder)).net.state_dict())
    assert all(torch.equal(nets[0][k], nets[1][k]) for k in nets[0])
