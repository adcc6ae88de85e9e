"""Fixtures, and one torch thread per pytest-xdist worker. The helpers live in helpers.py."""
import os

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: N workers share the cores, so one thread per process
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"

import pytest  # noqa: E402  (after the thread settings, which numpy and torch read on import)

from helpers import write_image_folder, write_mnist  # noqa: E402


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


@pytest.fixture(scope="session")
def real_digits(tmp_path_factory):
    """scikit-learn's 1,797 real handwritten digits in MNIST's on-disk layout (1,500 train, 297 held out)."""
    from benchmarks.digits import write_sklearn_digits
    return write_sklearn_digits(tmp_path_factory.mktemp("real_digits"))


@pytest.fixture(scope="session")
def digit_judge(real_digits):
    """The learning tests' judge: benchmarks.digits' classifier at 16x16, trained once per test process on
    the training split of `real_digits` (about 15 s on one thread), held-out split for its reference."""
    from benchmarks.digits import DigitJudge
    return DigitJudge.load(real_digits, size=16, steps=2000, verbose=False)
