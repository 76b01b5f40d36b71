"""The unit costs the capacity model is computed from: reading and checking
docs/capacity/unit-costs.json, and fitting the Redis command costs measured in it.

A module of its own so that scripts/capacity.py holds the model and its tables only.
Python 3.11 standard library only.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from pathlib import Path

SCHEMA = 1


class CostsError(Exception):
    """The unit-costs file cannot be used; the message says why and what to do."""


def need(obj: dict, path: str):
    """obj[a][b]… for path 'a.b…', a finite non-negative number or a dict."""
    cur = obj
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise CostsError(f"unit costs: missing field {path!r}; re-run scripts/measure-unit-costs.sh")
        cur = cur[part]
    if isinstance(cur, bool) or not isinstance(cur, (int, float, dict)):
        raise CostsError(f"unit costs: field {path!r} is {cur!r}, not a number")
    if isinstance(cur, (int, float)) and (not math.isfinite(cur) or cur < 0):
        raise CostsError(f"unit costs: field {path!r} is {cur!r}, not a finite non-negative number")
    return cur


def load_costs(path: Path, today: dt.date | None, max_age_days: int | None) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise CostsError(f"unit costs: cannot read {path}: {e.strerror}") from None
    try:
        costs = json.loads(text)
    except json.JSONDecodeError as e:
        raise CostsError(f"unit costs: {path} is not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(costs, dict):
        raise CostsError(f"unit costs: {path} is not a JSON object")
    if costs.get("schema") != SCHEMA:
        raise CostsError(
            f"unit costs: schema {costs.get('schema')!r}, this script reads schema {SCHEMA}; "
            "re-run scripts/measure-unit-costs.sh"
        )
    try:
        measured = dt.datetime.strptime(str(costs.get("measured_at")), "%Y-%m-%dT%H:%M:%SZ").date()
    except ValueError:
        raise CostsError(f"unit costs: measured_at {costs.get('measured_at')!r} is not a UTC time") from None
    if today is not None:
        if measured > today:
            raise CostsError(f"unit costs: measured_at {measured} is in the future")
        if max_age_days is not None and (today - measured).days > max_age_days:
            raise CostsError(
                f"unit costs: measured on {measured}, {(today - measured).days} days ago, older than "
                f"--max-age-days {max_age_days}; re-run scripts/measure-unit-costs.sh"
            )
    runs = costs.get("runs")
    if not isinstance(runs, dict) or not runs:
        raise CostsError("unit costs: no runs")
    for name, run in runs.items():
        for field in (
            "commands.single.events", "commands.batch.events", "commands.mixed.events",
            "wire.batch_body_bytes_per_event", "wire.signature_header_bytes",
            "archive.bytes_per_row", "kv.placement_rounds", "kv.writes_changed", "kv.bytes_per_key",
            "control.cpu_us_per_placement_round", "control.commands_per_placement_round",
            "memory.classes", "impressions_per_allocation", "placements", "recent_windows",
        ):
            need(run, field)
        for shape in ("single", "batch", "mixed"):
            if need(run, f"commands.{shape}.events") == 0:
                raise CostsError(f"unit costs: run {name}: the {shape} phase counted no event")
        if need(run, "kv.placement_rounds") == 0:
            raise CostsError(f"unit costs: run {name}: no control round was measured")
    return costs


def solve3(a: list[list[float]], b: list[float]) -> list[float]:
    """Cramer's rule for a 3×3 system."""

    def det(m):
        return (
            m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
        )

    d = det(a)
    if abs(d) < 1e-9:
        raise CostsError("unit costs: the three command phases do not separate bodies, entries and events")
    out = []
    for i in range(3):
        m = [row[:] for row in a]
        for r in range(3):
            m[r][i] = b[r]
        out.append(det(m) / d)
    return out


# Commands that touch the event stream's slot (one key, one shard): the ingest script's
# replay memory and XADDs, and the consumer groups' reads, acknowledgements and trims.
STREAM_SLOT = ("xadd", "xreadgroup", "xack", "xautoclaim", "xclaim", "xtrim", "xdel", "xlen", "xpending", "xinfo|stream")


@dataclass
class Unit:
    """Per-body / per-entry / per-event Redis commands, fitted from the three phases."""

    body: float
    entry: float
    event: float
    stream_body: float
    stream_entry: float
    stream_event: float


def fit_commands(run: dict) -> Unit:
    phases = [run["commands"][s] for s in ("single", "batch", "mixed")]
    a = [[p["bodies"], p["entries"], p["events"]] for p in phases]
    total = solve3(a, [p["total"] for p in phases])

    def on_stream(p):
        by = p["by_command"]
        # The ingest script's EVALSHA, EXISTS and SET per body run on the stream's slot.
        return sum(by.get(k, 0) for k in STREAM_SLOT) + 3 * p["bodies"]

    stream = solve3(a, [on_stream(p) for p in phases])
    return Unit(*[max(0.0, x) for x in total + stream])
