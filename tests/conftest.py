"""Shared pytest fixtures."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import pytest


@pytest.fixture(scope="session")
def omniglot_npz(tmp_path_factory):
    """Path of omniglot28.npz built once per session from the local offline archives (~10 s).

    Skipped when the offline copy (../shared/data/omniglot next to the repository) is absent.
    """
    from data_prep import omniglot

    if not all((omniglot.LOCAL_DEFAULT / n).is_file() for n in omniglot.ARCHIVES):
        pytest.skip(f"offline Omniglot archives not found in {omniglot.LOCAL_DEFAULT}")
    out = tmp_path_factory.mktemp("omniglot")
    return omniglot.prepare(omniglot.LOCAL_DEFAULT, out, log=lambda msg: None)
