"""Fixtures, and one torch thread per pytest-xdist worker. The helpers live in helpers.py."""
import os

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: N workers share the cores, so one thread per process
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"

import pytest  # noqa: E402  (after the thread settings, which numpy and torch read on import)

from helpers import write_image_folder, write_mnist  # noqa: E402


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    return write_mnist(tmp_path_factory.mktemp("mnist_data"))


@pytest.fixture(scope="session")
def folder_dataset(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("folder") / "pets")
