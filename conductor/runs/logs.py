"""A run's Dagster events as server-sent events."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from conductor.models import Run
from conductor.runs.instances import instance
from conductor.runs.observe import TERMINAL
from conductor.settings import Settings


def _record(step: dict[str, Any], record: Any) -> dict[str, Any]:
    entry = record.event_log_entry
    event = entry.dagster_event
    asset = event.asset_key.to_user_string() if event is not None and event.asset_key else None
    level = entry.level if isinstance(entry.level, str) else logging.getLevelName(entry.level)
    return {
        "dagster_run_id": step["run_id"],
        "partition": step["partition"],
        "timestamp": datetime.fromtimestamp(entry.timestamp, UTC).isoformat(),
        "level": level,
        "event_type": event.event_type_value if event is not None else None,
        "step_key": entry.step_key,
        "asset": asset,
        "message": entry.user_message or (event.message if event is not None else "") or "",
    }


def stream_logs(
    settings: Settings,
    run: Run,
    current_status: Callable[[], str],
    poll_seconds: float = 0.5,
    max_seconds: float = 3600.0,
) -> Iterator[str]:
    """Server-sent events: every Dagster event of every step, then ``event: end``.

    ``current_status`` re-reads the run's status; the stream ends once it is terminal
    and every event has been sent (or after ``max_seconds``).
    """
    inst = instance(settings, run.project_id)
    cursors: dict[str, str | None] = {s["run_id"]: None for s in run.plan}
    sent = 0
    deadline = time.monotonic() + max_seconds
    while True:
        status = current_status()
        for step in run.plan:
            while True:
                conn = inst.get_records_for_run(step["run_id"], cursor=cursors[step["run_id"]])
                for record in conn.records:
                    sent += 1
                    yield f"id: {sent}\nevent: log\ndata: {json.dumps(_record(step, record))}\n\n"
                if conn.records:
                    cursors[step["run_id"]] = conn.cursor
                if not conn.has_more:
                    break
        if status in TERMINAL or time.monotonic() > deadline:
            yield f"event: end\ndata: {json.dumps({'status': status, 'events': sent})}\n\n"
            return
        time.sleep(poll_seconds)
