"""The retry-memory policy and the resource hints every backend reads."""

from __future__ import annotations

import pytest

from pipecraft import Command, PipelineError, Resources
from pipecraft.node import node_from_dict
from pipecraft.retry import memory_cap, next_memory


def test_memory_grows_by_attempt_only_after_out_of_memory() -> None:
    res = Resources(memory_mb=2000, max_memory_mb=5000)
    assert next_memory(res, 1, 2000, True) == 4000
    assert next_memory(res, 2, 4000, True) == 5000  # 6000 capped
    assert next_memory(res, 3, 5000, True) is None  # already at the cap: pointless
    assert next_memory(res, 1, 2000, False) == 2000  # another failure: same request
    assert next_memory(res, 2, 4000, False) == 4000  # keeps what the last attempt had
    # the backend's cap (largest node or instance) applies too
    assert next_memory(res, 1, 2000, True, backend_cap=3000) == 3000
    assert memory_cap(Resources()) is None
    assert next_memory(Resources(memory_mb=100), 4, 400, True) == 500  # no cap


def test_resources_round_trip_and_validation() -> None:
    res = Resources(cpus=2, memory_mb=3000, time_min=90, max_memory_mb=9000, queue="q")
    node = Command(name="x", argv=["true"], resources=res)
    assert node.to_dict()["resources"] == {
        "cpus": 2,
        "memory_mb": 3000,
        "time_min": 90,
        "max_memory_mb": 9000,
        "queue": "q",
    }
    assert node_from_dict(node.to_dict()).resources == res
    # hints left unset stay out of the description (and of the fingerprint)
    assert Command(name="x", argv=["true"]).to_dict()["resources"] == {
        "cpus": 1,
        "memory_mb": 1024,
    }
    assert node.fingerprint() == Command(name="x", argv=["true"]).fingerprint()
    for kw, match in [
        ({"time_min": 0}, "time_min: got 0"),
        ({"memory_mb": 2000, "max_memory_mb": 1000}, "max_memory_mb: got 1000, expected an"),
        ({"queue": " "}, "Resources.queue: got ' '"),
        ({"account": 3}, "Resources.account: got 3"),
    ]:
        with pytest.raises(PipelineError, match=match):
            Resources(**kw)
