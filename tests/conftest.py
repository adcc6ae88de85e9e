"""Fixtures, and one torch thread per pytest-xdist worker. The helpers live in helpers.py."""
import contextlib
import fcntl
import hashlib
import os
import shutil
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: N workers share the cores, so one thread per process
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"

import pytest  # noqa: E402  (after the thread settings, which numpy and torch read on import)

from helpers import ROOT, write_image_folder, write_mnist  # noqa: E402


# The slow tier's longest tests, by what they do, longest kind first: they start first, so that the workers do not
# end with one of them alone on a long test (pytest-xdist hands tests out in collection order).
LONGEST_FIRST = (("learns", "generates_the_requested_digit", "runner_prints"), ("compile", "parity"), ("recipe_starts",))


def pytest_collection_modifyitems(items):
    def rank(item):
        return next((i for i, words in enumerate(LONGEST_FIRST) if any(w in item.name for w in words)), len(LONGEST_FIRST))
    items.sort(key=rank)  # stable: file order within a rank


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    return write_mnist(tmp_path_factory.mktemp("mnist_data"))


@pytest.fixture(scope="session")
def folder_dataset(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("folder") / "pets")


@contextlib.contextmanager
def exclusive(lock_file: Path):
    """Hold an exclusive lock on LOCK_FILE (the pytest-xdist workers share the folders below)."""
    with open(lock_file, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def real_images(request, tmp_path_factory):
    """The learning tests' real images in MNIST's on-disk layout: a fixed subset of the real Fashion-MNIST (5,000
    training and 1,000 test images) when Debian's dataset-fashion-mnist is installed, else scikit-learn's 1,797
    handwritten digits (1,500 train, 297 held out). benchmarks.digits.dataset_in(folder) names the --dataset. Written
    once into pytest's cache folder (.pytest_cache), keyed by benchmarks/digits.py's text: the workers and both tiers
    share it and the judge cached in it."""
    from benchmarks.digits import write_fashion_mnist_subset, write_sklearn_digits
    from common.data import DEBIAN_FASHION_MNIST
    fashion = (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file()
    write = write_fashion_mnist_subset if fashion else write_sklearn_digits
    if getattr(request.config, "cache", None) is None:  # -p no:cacheprovider
        return write(tmp_path_factory.mktemp("real_images"))
    key = hashlib.sha256((ROOT / "benchmarks" / "digits.py").read_bytes()).hexdigest()[:12]
    folder = request.config.cache.mkdir(f"real_{'fashion_mnist' if fashion else 'digits'}_{key}")
    layout = "FashionMNIST" if fashion else "MNIST"
    with exclusive(folder / "lock"):
        if not (folder / layout).is_dir():  # written aside, then moved in: a killed worker leaves no half set
            shutil.rmtree(folder / "partial", ignore_errors=True)
            write(folder / "partial")
            (folder / "partial" / layout).rename(folder / layout)
            shutil.rmtree(folder / "partial")
    return folder


class JudgeOnFirstUse:
    """The learning tests' judge: benchmarks.digits' classifier at 16x16, trained on the training split of
    `real_images` (about 45 s on one thread) when first used, by the first worker that needs it, and cached; held-out
    split for its reference. On first use, not at set-up: a learning test trains its G first, so a second worker
    is not held up waiting for the first to train the judge."""

    def __init__(self, folder: Path):
        self.folder, self.judge = folder, None

    def __getattr__(self, name):  # score, accuracy, ...: the judge's own
        if self.judge is None:
            import torch
            from benchmarks.digits import DigitJudge, dataset_in
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # the same judge, bit for bit, whichever run trains it (xdist workers or -n 0)
            try:
                with exclusive(self.folder / "lock"):
                    self.judge = DigitJudge.load(self.folder, size=16, steps=2000, verbose=False,
                                                 dataset=dataset_in(self.folder))
            finally:
                torch.set_num_threads(threads)
        return getattr(self.judge, name)


@pytest.fixture(scope="session")
def judge(real_images):
    return JudgeOnFirstUse(real_images)
