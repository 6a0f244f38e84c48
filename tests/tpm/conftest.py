"""The TPM tests' fixtures: one swtpm per test session with a fresh state directory on free ports, stopped after."""
from __future__ import annotations

import pytest

from tests.kit.swtpm import Swtpm, swtpm_available


@pytest.fixture(scope="session")
def swtpm(tmp_path_factory):
    """A running software TPM (`.tcti` for clients); the TPM tests skip, saying why, when swtpm or tpm2-pytss is missing."""
    if not swtpm_available():
        pytest.skip("swtpm and tpm2-pytss are needed (make test installs swtpm, swtpm-tools, tpm2-tools, libtss2-dev)")
    with Swtpm(tmp_path_factory.mktemp("swtpm-state")) as tpm:
        yield tpm


@pytest.fixture
def second_swtpm(tmp_path):
    """Another machine's TPM: what a copy of the gateway's disk meets on a laptop."""
    if not swtpm_available():
        pytest.skip("swtpm and tpm2-pytss are needed")
    with Swtpm(tmp_path / "other-tpm") as tpm:
        yield tpm
