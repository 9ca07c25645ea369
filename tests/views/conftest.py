from tests.live.conftest import *  # noqa: F403  (cluster fixtures and the leftover check)
