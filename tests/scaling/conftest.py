import pytest

from research.scaling import RunTable
from tests.scaling.synthetic import chinchilla_like_runs


@pytest.fixture(scope="session")
def chinchilla_table() -> RunTable:
    table = chinchilla_like_runs()
    assert len(table) == 240
    return table
