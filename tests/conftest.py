"""Test set-up: 8 fake CPU devices (set before JAX starts), small real data."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest  # noqa: E402

from tests.util import write_digits_folder  # noqa: E402


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory):
    return write_digits_folder(str(tmp_path_factory.mktemp("digits")))
