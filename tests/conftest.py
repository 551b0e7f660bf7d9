import pytest
from helpers import MeshdProcess, dev_agent


@pytest.fixture(scope="session")
def agent() -> MeshdProcess:
    """One shared `meshd agent -dev`; tests use distinct service names and keys."""
    a = dev_agent(env={"MESHD_TEST": "1"}).start()
    yield a
    a.stop()
