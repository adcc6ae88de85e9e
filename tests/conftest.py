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


# The slow tier's longest tests with their seconds in a clean-clone run on the 2-core machine (e311b49, two workers).
# They start longest first and pytest.ini hands tests out one at a time (--maxschedchunk=1), so a worker that finishes
# takes the longest test left: the workers end close together instead of one running a long test alone at the end.
# Tests not listed (all under 15 s) follow in file order.
SECONDS = {
    "test_progan.py::test_learns_the_digits": 336,
    "test_began.py::test_learns_the_digits": 235,
    "test_wgan_gp.py::test_learns_the_digits": 177,
    "test_sagan.py::test_learns_the_digits": 159,
    "test_stylegan_lite.py::test_learns_the_digits": 154,
    "test_minimal_gan.py::test_learns_the_digits": 126,
    "test_wgan.py::test_learns_the_digits": 106,
    "test_sagan.py::test_compile_and_spectral_norm_under_compile": 104,
    "test_cgan.py::test_generates_the_requested_digit": 90,
    "test_lsgan.py::test_learns_the_digits": 73,
    "test_dcgan.py::test_learns_the_digits": 62,
    "test_common.py::test_fid_parity_with_pytorch_fid": 62,
    "test_stylegan_lite.py::test_compile": 60,
    "test_recipes.py::test_the_runner_prints_the_table": 56,
    "test_began.py::test_compile": 51,
    "test_minimal_gan.py::test_learns_every_ring_mode": 47,
    "test_progan.py::test_compile_across_a_phase_change": 46,
    "test_cgan.py::test_compile": 29,
    "test_minimal_gan.py::test_compile_and_bf16": 27,
    "test_wgan_gp.py::test_compile_runs_the_penalty_uncompiled": 22,
    "test_dcgan.py::test_compile": 15,
}


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: -SECONDS.get(item.nodeid.rsplit("/", 1)[-1], 0))  # stable: file order among the rest


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
def real_digits(request, tmp_path_factory):
    """scikit-learn's 1,797 real handwritten digits in MNIST's on-disk layout (1,500 train, 297 held out). Written
    once into pytest's cache folder (.pytest_cache), keyed by benchmarks/digits.py's text: the workers and both tiers
    share it and the judge cached in it (training it costs a worker about 45 s)."""
    from benchmarks.digits import write_sklearn_digits
    if getattr(request.config, "cache", None) is None:  # -p no:cacheprovider
        return write_sklearn_digits(tmp_path_factory.mktemp("real_digits"))
    key = hashlib.sha256((ROOT / "benchmarks" / "digits.py").read_bytes()).hexdigest()[:12]
    folder = request.config.cache.mkdir(f"real_digits_{key}")
    with exclusive(folder / "lock"):
        if not (folder / "MNIST").is_dir():  # written aside, then moved in: a killed worker leaves no half set
            shutil.rmtree(folder / "partial", ignore_errors=True)
            write_sklearn_digits(folder / "partial")
            (folder / "partial" / "MNIST").rename(folder / "MNIST")
            shutil.rmtree(folder / "partial")
    return folder


class JudgeOnFirstUse:
    """The learning tests' judge: benchmarks.digits' classifier at 16x16, trained on the training split of
    `real_digits` (about 45 s on one thread) when first used, by the first worker that needs it, and cached; held-out
    split for its reference. On first use, not at set-up: a learning test trains its G first, so a second worker
    is not held up waiting for the first to train the judge."""

    def __init__(self, folder: Path):
        self.folder, self.judge = folder, None

    def __getattr__(self, name):  # score, accuracy, ...: the judge's own
        if self.judge is None:
            import torch
            from benchmarks.digits import DigitJudge
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # the same judge, bit for bit, whichever run trains it (xdist workers or -n 0)
            try:
                with exclusive(self.folder / "lock"):
                    self.judge = DigitJudge.load(self.folder, size=16, steps=2000, verbose=False)
            finally:
                torch.set_num_threads(threads)
        return getattr(self.judge, name)


@pytest.fixture(scope="session")
def digit_judge(real_digits):
    return JudgeOnFirstUse(real_digits)
