#!/usr/bin/env python3
"""allot's capacity model, computed from measured unit costs.

Reads docs/capacity/unit-costs.json (written by scripts/measure-unit-costs.sh) and prints
the tables of docs/capacity.md for a deployment described by the flags:

    scripts/capacity.py                          # 1M requests/s, 300 colos, 10,000 placements
    scripts/capacity.py --rps 3e6 --placements 50000 --zipf 1.1 --campaigns 64
    scripts/capacity.py --check docs/capacity.md # the doc's generated block equals the output
    scripts/capacity.py --write docs/capacity.md # replaces the doc's generated block

Python 3.11 standard library only. Every figure that is not measured by the harness is a
flag, named in the output, with its source.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import re
import shlex
import sys
from pathlib import Path

from capacity_costs import CostsError, fit_commands, load_costs

ROOT = Path(__file__).resolve().parent.parent
# A generated block in a doc: `<!-- capacity.py [FLAGS] -->` … `<!-- capacity.py: end -->`,
# holding this script's output for FLAGS.
BEGIN = re.compile(r"<!-- capacity\.py((?: --[a-z][a-z0-9-]*(?: [^- ][^ ]*)?)*) -->\n")
END = "<!-- capacity.py: end -->"

# Figures measured elsewhere in the repo, cited in docs/performance.md.
INGEST_EVENTS_PER_CORE = 226_010 / 2  # "Origin ingest", 100-event POSTs, 2 cores shared with Redis
REDIS_OPS_PER_SHARD = 997_009  # "Origin ingest", redis-benchmark INCR -P 16 on the same machine
# Documented limits (docs/capacity.md cites the pages).
KV_WRITES_PER_KEY_PER_SEC = 1
KV_BULK_MAX_PAIRS = 10_000
KV_BULK_MAX_BYTES = 100_000_000
CF_API_REQUESTS_PER_5_MIN = 1_200


def zipf_groups(n: int, s: float) -> list[tuple[int, float]]:
    """Placements by traffic rank as (count, share of each): exact for the first 1,000
    ranks, then geometric groups 1 % wide (shares within a group differ by under 1 %),
    so a model of 10⁸ placements is a few thousand terms."""
    groups, i = [], 1
    while i <= n:
        j = i if i <= 1000 else min(n, max(i, int(i * 1.01)))
        # The group's mean of 1/r^s, by the midpoint of its ranks.
        groups.append((j - i + 1, ((i + j) / 2) ** -s))
        i = j + 1
    total = sum(c * w for c, w in groups)
    return [(c, w / total) for c, w in groups]


def fmt(x: float, unit: str = "") -> str:
    if x >= 100:
        v = f"{x:,.0f}"
    elif x >= 10:
        v = f"{x:,.1f}"
    elif x >= 0.01 or x == 0:
        v = f"{x:,.2f}"
    else:
        v = f"{x:.2e}"
    return f"{v} {unit}".strip()


def human_bytes(b: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= size:
            return f"{b / size:,.1f} {unit}"
    return f"{b:,.0f} B"


def model(args, costs: dict) -> dict:
    run = costs["runs"].get(str(args.campaigns))
    if run is None:
        raise CostsError(f"unit costs: no run with {args.campaigns} campaigns (have {sorted(costs['runs'])})")
    z = {0.9: 1.645, 0.95: 1.96, 0.99: 2.576}.get(args.level)
    if z is None:
        raise CostsError("--level must be 0.9, 0.95 or 0.99")
    n = z * z * args.share * (1 - args.share) / (args.margin**2)
    groups = zipf_groups(args.placements, args.zipf)
    per_window = [(c, args.rps * share * args.period) for c, share in groups]
    rated = [(c, r, min(1.0, max(args.min_rate, 1.04 * n / r))) for c, r in per_window]
    sampled_total = sum(c * r * s for c, r, s in rated)
    census = sum(c for c, _, s in rated if s >= 1.0)
    unattainable = sum(c for c, r, _ in rated if r < n)
    at_floor = sum(c for c, r, s in rated if s <= args.min_rate and r * args.min_rate > n * 1.04)
    alloc_s = sampled_total / args.period
    imp_s = alloc_s * run["impressions_per_allocation"]
    events_s = alloc_s + imp_s

    # Edge batching: an isolate seals at 100 events or 1 s.
    per_isolate = events_s / (args.colos * args.isolates_per_colo)
    batch = max(1.0, min(100.0, per_isolate * 1.0))
    bodies_s = events_s / batch
    entries_per_body = sum(c * (1 - (1 - r * s / sampled_total) ** batch) for c, r, s in rated)
    entries_s = bodies_s * entries_per_body
    body_bytes = batch * run["wire"]["batch_body_bytes_per_event"] if batch > 1 else run["wire"]["single_body_bytes_per_event"]
    egress_s = bodies_s * (body_bytes + run["wire"]["signature_header_bytes"] + args.http_overhead)

    # Redis commands.
    u = fit_commands(run)
    control_cmds_s = args.placements * run["control"]["commands_per_placement_round"] / args.period
    data_cmds_s = u.body * bodies_s + u.entry * entries_s + u.event * events_s
    stream_cmds_s = u.stream_body * bodies_s + u.stream_entry * entries_s + u.stream_event * events_s
    shard_budget = args.redis_ops_per_shard * args.utilisation
    shards_ops = math.ceil((data_cmds_s + control_cmds_s) / shard_budget)

    # Redis memory.
    cls = run["memory"]["classes"]
    P = run["placements"]

    def per_key(name, what="bytes"):
        c = cls.get(name)
        return (c["bytes"] / c["keys"]) if c and c["keys"] else 0.0

    def per_element(name):
        c = cls.get(name)
        return (c["bytes"] / c["elements"]) if c and c["elements"] else 0.0

    live_windows = run["recent_windows"] + 4  # recent + 3 of slack (the TTL) + the current one
    fixed = {
        "targets": per_key("targets"),
        "plan (current, with its decision)": per_key("plan"),
        f"plans (history, {args.history_len} plans)": per_element("plans") * args.history_len,
        f"windows (log, {args.history_windows} windows)": per_element("windows") * args.history_windows,
        "fence, state, audit, registry": per_key("fence") + per_key("state") + per_key("audit")
        + cls.get("allot:registry", {"bytes": 0})["bytes"] / P,
        f"window hashes ({live_windows} live)": per_key("w") * live_windows,
    }
    per_placement = sum(fixed.values())
    ttl_window = args.period * (run["recent_windows"] + 3)
    transient = {
        "event stream (events' JSON + per-entry overhead, until both groups ack)": args.stream_hold
        * (events_s * run["wire"]["batch_body_bytes_per_event"] + entries_s * args.entry_overhead),
        "replay memory (per body, 2 × skew)": bodies_s * 2 * args.skew * per_key("replay"),
        "applied markers (per entry, window TTL)": entries_s * ttl_window * per_key("applied"),
        "impression markers (per impression, window TTL + 6 min)": imp_s * (ttl_window + 360) * per_key("imp"),
    }
    mem_total = per_placement * args.placements + sum(transient.values())
    shards_mem = math.ceil(mem_total / (args.shard_memory_gb * 1e9 * args.utilisation))
    stream_shard_mem = sum(v for k, v in transient.items() if k.startswith(("event stream", "replay")))

    # KV writes.
    f = run["kv"]["writes_changed"] / run["kv"]["placement_rounds"]
    k_age = max(1, round(args.republish_after / args.period))
    writes_per_round = f / (1 - (1 - f) ** k_age) if f > 0 else 1 / k_age
    kv_per_min = args.placements * writes_per_round * 60 / args.period
    kv_bulk_per_round = math.ceil(args.placements * writes_per_round / KV_BULK_MAX_PAIRS) if args.placements else 0
    kv_bytes_per_round = args.placements * writes_per_round * run["kv"]["bytes_per_key"]
    kv_bulk_per_round = max(kv_bulk_per_round, math.ceil(kv_bytes_per_round / KV_BULK_MAX_BYTES))
    kv_api_per_5min = kv_bulk_per_round * 300 / args.period

    # Control loop.
    cpu_period = args.placements * run["control"]["cpu_us_per_placement_round"] / 1e6
    rtt_period = args.placements * run["control"]["commands_per_placement_round"] * args.redis_rtt_ms / 1e3

    # Origin and archive.
    replicas = math.ceil(events_s / (args.ingest_events_per_core * args.origin_cores * args.utilisation))
    archive_day = events_s * 86_400 * run["archive"]["bytes_per_row"]

    limits = [
        ("event stream shard (one key, one shard): ops/s", stream_cmds_s, shard_budget),
        ("event stream shard memory (stream + replay memory): GB", stream_shard_mem / 1e9,
         args.shard_memory_gb * args.utilisation),
        ("control loop CPU (one lease holder): s per period", cpu_period, args.period * args.utilisation),
        ("control loop Redis round trips (sequential): s per period", rtt_period, args.period * args.utilisation),
        ("Cloudflare API: bulk requests per 5 min", kv_api_per_5min, CF_API_REQUESTS_PER_5_MIN * args.utilisation),
        ("KV: writes per key per s", 1 / (args.period * k_age) if f == 0 else writes_per_round / args.period,
         KV_WRITES_PER_KEY_PER_SEC),
    ]
    return dict(
        run=run, n=n, census=census, unattainable=unattainable, at_floor=at_floor, alloc_s=alloc_s, imp_s=imp_s,
        events_s=events_s, batch=batch, bodies_s=bodies_s, entries_per_body=entries_per_body, entries_s=entries_s,
        egress_s=egress_s, unit=u, data_cmds_s=data_cmds_s, control_cmds_s=control_cmds_s,
        stream_cmds_s=stream_cmds_s, shards_ops=shards_ops, fixed=fixed, per_placement=per_placement,
        transient=transient, mem_total=mem_total, shards_mem=shards_mem, stream_shard_mem=stream_shard_mem,
        f=f, writes_per_round=writes_per_round, kv_per_min=kv_per_min, kv_bulk_per_round=kv_bulk_per_round,
        kv_bytes_per_round=kv_bytes_per_round, kv_api_per_5min=kv_api_per_5min, cpu_period=cpu_period,
        rtt_period=rtt_period, replicas=replicas, archive_day=archive_day, limits=limits,
    )


def limit_scale(args, costs, scale: str, index: int) -> float | None:
    """The largest value of `scale` (rps or placements), all else as given, at which
    limit `index` stays within its ceiling; inf if beyond 10,000×, None if it is over
    its ceiling even at 1/1,000 (the limit does not depend on this scale)."""
    base = getattr(args, scale)

    def share(factor):
        a = argparse.Namespace(**vars(args))
        setattr(a, scale, base * factor if scale == "rps" else max(1, round(base * factor)))
        _, used, cap = model(a, costs)["limits"][index]
        return used / cap

    lo, hi = 1e-3, 1e4
    if share(hi) < 1:
        return math.inf
    if share(lo) >= 1:
        return None
    for _ in range(30):
        mid = math.sqrt(lo * hi)
        if share(mid) >= 1:
            hi = mid
        else:
            lo = mid
    return base * lo


def render(args, costs: dict) -> str:
    m = model(args, costs)
    run, u = m["run"], m["unit"]
    out = []
    w = out.append
    w(f"Inputs: {args.rps:,.0f} requests/s, {args.colos} colos, {args.placements:,} placements with Zipf(s = "
      f"{args.zipf}) traffic, {args.campaigns} campaigns each, ±{args.margin * 100:g} pp at {args.level:.0%} around "
      f"a share of {args.share}, period {args.period:g} s, utilisation ceiling {args.utilisation:.0%}; unit costs "
      f"measured {costs['measured_at']} ({costs['build']} build, {costs['machine']['cores']} cores).")
    w("")
    w("**Sampling and events**")
    w("")
    w("| figure | value |")
    w("|---|---:|")
    w(f"| samples a window needs (n = z²s(1−s)/e²) | {fmt(m['n'])} |")
    w(f"| placements sampled at rate 1 (census) | {m['census']:,} |")
    w(f"| … of which below n requests per window (confidence unattainable) | {m['unattainable']:,} |")
    w(f"| placements at the rate floor ({args.min_rate:g}, oversampled) | {m['at_floor']:,} |")
    w(f"| sampled allocations/s | {fmt(m['alloc_s'])} |")
    w(f"| impressions/s ({fmt(run['impressions_per_allocation'])} per allocation, measured) | {fmt(m['imp_s'])} |")
    w(f"| events/s to the origin | {fmt(m['events_s'])} ({m['events_s'] / args.rps:.2%} of requests) |")
    w(f"| events per edge batch ({args.isolates_per_colo} isolates per colo) | {fmt(m['batch'])} |")
    w(f"| bodies/s; stream entries per body (distinct placements) | {fmt(m['bodies_s'])}; {fmt(m['entries_per_body'])} |")
    w(f"| edge egress (bodies + signature + {args.http_overhead} B of HTTP) | {human_bytes(m['egress_s'])}/s |")
    w(f"| origin replicas ({args.origin_cores} cores, {fmt(args.ingest_events_per_core)} events/s per core) | {m['replicas']} |")
    w(f"| archive (Parquet, {fmt(run['archive']['bytes_per_row'])} B per row) | {human_bytes(m['archive_day'])}/day |")
    w("")
    w("**Redis**")
    w("")
    w("| figure | value |")
    w("|---|---:|")
    w(f"| commands per body / stream entry / event (fitted) | {fmt(u.body)} / {fmt(u.entry)} / {fmt(u.event)} |")
    w(f"| commands/s, events | {fmt(m['data_cmds_s'])} |")
    w(f"| commands/s, control rounds ({fmt(run['control']['commands_per_placement_round'])} per placement) | {fmt(m['control_cmds_s'])} |")
    w(f"| commands/s on the event stream's shard | {fmt(m['stream_cmds_s'])} |")
    w(f"| shards for ops ({fmt(args.redis_ops_per_shard)} ops/s each) | {m['shards_ops']} |")
    for k, v in m["fixed"].items():
        w(f"| memory per placement: {k} | {human_bytes(v)} |")
    w(f"| memory per placement, total | {human_bytes(m['per_placement'])} |")
    for k, v in m["transient"].items():
        w(f"| memory: {k} | {human_bytes(v)} |")
    w(f"| memory, total | {human_bytes(m['mem_total'])} |")
    w(f"| shards for memory ({args.shard_memory_gb:g} GB each) | {m['shards_mem']} |")
    w("")
    w("**Plans and the control loop**")
    w("")
    w("| figure | value |")
    w("|---|---:|")
    w(f"| plans changed per placement-round (measured) | {m['f']:.1%} |")
    w(f"| KV writes per placement-round (with the {args.republish_after:g} s republish) | {m['writes_per_round']:.3f} |")
    w(f"| KV writes per minute | {fmt(m['kv_per_min'])} |")
    w(f"| KV writes per placement per hour | {fmt(m['writes_per_round'] * 3600 / args.period)} |")
    w(f"| bulk requests per round ({KV_BULK_MAX_PAIRS:,} pairs, 100 MB each) | {m['kv_bulk_per_round']} ({human_bytes(m['kv_bytes_per_round'])}) |")
    w(f"| Cloudflare API requests per 5 min (limit {CF_API_REQUESTS_PER_5_MIN:,}) | {fmt(m['kv_api_per_5min'])} |")
    w(f"| control CPU per period ({fmt(run['control']['cpu_us_per_placement_round'])} µs per placement) | {fmt(m['cpu_period'])} s |")
    w(f"| control Redis round trips per period ({args.redis_rtt_ms:g} ms each) | {fmt(m['rtt_period'])} s |")
    w("")
    w("**Limits** (use at these inputs against the ceiling at the utilisation ceiling, and how far each scale")
    w("can grow, all else as given, before this limit is reached)")
    w("")
    w("| limit | used | ceiling | share | max requests/s | max placements |")
    w("|---|---:|---:|---:|---:|---:|")

    def at(v):
        if v is None:
            return "over at any"
        return "beyond 10,000×" if math.isinf(v) else fmt(v)

    rows = []
    for i, (name, used, cap) in enumerate(m["limits"]):
        rows.append((used / cap, name, used, cap, limit_scale(args, costs, "rps", i),
                     limit_scale(args, costs, "placements", i)))
    for share, name, used, cap, rps, placements in sorted(rows, key=lambda r: -r[0]):
        w(f"| {name} | {fmt(used)} | {fmt(cap)} | {share:.0%} | {at(rps)} | {at(placements)} |")
    first = max(rows, key=lambda r: r[0])
    w("")
    state = "over its ceiling" if first[0] >= 1 else "the closest to its ceiling"
    w(f"First to break: **{first[1]}**, {state} at these inputs ({first[0]:.0%}).")
    return "\n".join(out) + "\n"


def render_units(costs: dict) -> str:
    """The measured unit costs of every run, side by side."""
    runs = sorted(costs["runs"].items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0)
    m = costs["machine"]
    out = [f"Measured {costs['measured_at']} by `{costs['command']}` ({costs['build']} build), {m['cores']} cores, "
           f"load average {m['load_average_start']} before and {m['load_average_end']} after.", ""]
    w = out.append
    w("| unit cost | " + " | ".join(f"{r['campaigns']} campaigns" for _, r in runs) + " |")
    w("|---|" + "---:|" * len(runs))

    def row(label, f):
        w(f"| {label} | " + " | ".join(f(r) for _, r in runs) + " |")

    def cls(r, name):
        return r["memory"]["classes"].get(name, {"keys": 0, "bytes": 0, "elements": 0})

    def per_key(r, name):
        c = cls(r, name)
        return human_bytes(c["bytes"] / c["keys"]) if c["keys"] else "—"

    def per_el(r, name):
        c = cls(r, name)
        return human_bytes(c["bytes"] / c["elements"]) if c["elements"] else "—"

    row("run: placements; samples per window", lambda r: f"{r['placements']}; {fmt(r['samples_per_window'])}")
    row("events accepted (impressions per allocation)", lambda r: f"{r['events_accepted']:,} ({r['impressions_per_allocation']:.2f})")
    row("Redis: targets hash", lambda r: per_key(r, "targets"))
    row("Redis: current plan record", lambda r: per_key(r, "plan"))
    row("Redis: plan history, per plan", lambda r: per_el(r, "plans"))
    row("Redis: window log, per window", lambda r: per_el(r, "windows"))
    row("Redis: controller state; fence", lambda r: f"{per_key(r, 'state')}; {per_key(r, 'fence')}")
    row("Redis: window hash (80 profiles)", lambda r: per_key(r, "w"))
    row("Redis: window hashes live per placement in the run (TTL ≥ 60 s)", lambda r: fmt(cls(r, "w")["keys"] / r["placements"]))
    row("Redis: applied marker; impression marker; replay memory", lambda r: f"{per_key(r, 'applied')}; {per_key(r, 'imp')}; {per_key(r, 'replay')}")
    row("Redis: event stream, per entry", lambda r: per_el(r, "allot:events"))
    row("Redis: `used_memory` per new placement (targets, first plan)", lambda r: human_bytes(r["memory"]["used_memory_per_new_placement"]))
    for shape, label in (("single", "single-event bodies"), ("batch", "100-event bodies, one placement"), ("mixed", "100-event bodies, all placements")):
        row(f"Redis commands per event, {label}", lambda r, s=shape: fmt(r["commands"][s]["total"] / r["commands"][s]["events"]))
    row("Redis commands per body / entry / event (fitted)", lambda r: " / ".join(fmt(x) for x in (lambda u: (u.body, u.entry, u.event))(fit_commands(r))))
    row("wire: body bytes per event, single; batch of 100; gzip", lambda r: f"{fmt(r['wire']['single_body_bytes_per_event'])}; {fmt(r['wire']['batch_body_bytes_per_event'])}; {fmt(r['wire']['batch_gzip_bytes_per_event'])}")
    row("archive: Parquet bytes per row (rows per object)", lambda r: f"{fmt(r['archive']['bytes_per_row'])} ({fmt(r['archive']['rows'] / max(1, r['archive']['objects']))})")
    row("KV: writes per placement-round, changed; age rule", lambda r: f"{r['kv']['writes_changed'] / r['kv']['placement_rounds']:.3f}; {r['kv']['writes_age_rule'] / r['kv']['placement_rounds']:.3f}")
    row("KV: bulk requests; most keys in one; bytes per key", lambda r: f"{r['kv']['bulk_requests']}; {r['kv']['max_keys_per_request']}; {fmt(r['kv']['bytes_per_key'])}")
    row("KV: target change to its write (writes in 2 periods)", lambda r: f"{r['kv']['target_change_ms']} ms ({r['kv']['target_change_writes']})")
    row("control: CPU per placement-round", lambda r: f"{fmt(r['control']['cpu_us_per_placement_round'])} µs")
    row("control: Redis commands per placement-round", lambda r: fmt(r["control"]["commands_per_placement_round"]))
    return "\n".join(out) + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--costs", type=Path, default=ROOT / "docs/capacity/unit-costs.json")
    p.add_argument("--rps", type=float, default=1e6, help="requests/s at the edge")
    p.add_argument("--colos", type=int, default=300)
    p.add_argument("--placements", type=int, default=10_000)
    p.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of traffic over placements")
    p.add_argument("--campaigns", type=int, default=8, help="which measured run: 8 or 64")
    p.add_argument("--margin", type=float, default=0.01)
    p.add_argument("--level", type=float, default=0.95)
    p.add_argument("--share", type=float, default=0.5, help="the target nearest ½ (the worst case is ½)")
    p.add_argument("--period", type=float, default=60.0, help="control period in seconds")
    p.add_argument("--min-rate", type=float, default=1e-4)
    p.add_argument("--utilisation", type=float, default=0.5, help="plan resources to this share of their ceiling")
    p.add_argument("--isolates-per-colo", type=int, default=20, help="assumed: Cloudflare does not publish it")
    p.add_argument("--http-overhead", type=int, default=300, help="bytes of request line and headers per body")
    p.add_argument("--ingest-events-per-core", type=float, default=INGEST_EVENTS_PER_CORE)
    p.add_argument("--origin-cores", type=int, default=2)
    p.add_argument("--redis-ops-per-shard", type=float, default=REDIS_OPS_PER_SHARD)
    p.add_argument("--redis-rtt-ms", type=float, default=0.25, help="origin ↔ Redis round trip (same zone)")
    p.add_argument("--shard-memory-gb", type=float, default=25.0)
    p.add_argument("--history-len", type=int, default=100, help="control.history_len")
    p.add_argument("--history-windows", type=int, default=1440, help="control.history_windows")
    p.add_argument("--republish-after", type=float, default=600.0, help="control.republish_after_secs")
    p.add_argument("--skew", type=float, default=60.0, help="ingest.max_skew_secs")
    p.add_argument("--stream-hold", type=float, default=70.0, help="seconds an entry stays in the stream")
    p.add_argument("--units", action="store_true", help="print the measured unit costs instead of the model")
    p.add_argument("--entry-overhead", type=float, default=100.0, help="bytes per stream entry besides the JSON")
    p.add_argument("--max-age-days", type=int, default=None, help="refuse unit costs older than this")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--check", type=Path, metavar="DOC", help="fail unless DOC's generated block equals the output")
    g.add_argument("--write", type=Path, metavar="DOC", help="replace DOC's generated block with the output")
    a = p.parse_args(argv)
    if a.rps <= 0 or a.placements < 1 or a.colos < 1 or not (0 < a.margin < 0.5) or not (0 < a.utilisation <= 1):
        p.error("rps, placements and colos must be positive, margin in (0, 0.5), utilisation in (0, 1]")
    return a


def blocks(doc: str, path: Path) -> list[tuple[list[str], int, int]]:
    """(flags, start, end) of every generated block, in order."""
    out, at = [], 0
    while (m := BEGIN.search(doc, at)) is not None:
        e = doc.find(END, m.end())
        if e < 0:
            raise CostsError(f"{path}: a generated block is not closed with {END}")
        out.append((shlex.split(m.group(1)), m.end(), e))
        at = e
    if not out:
        raise CostsError(f"{path} has no generated block (<!-- capacity.py [FLAGS] --> … {END})")
    return out


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    today = dt.datetime.now(dt.timezone.utc).date()
    try:
        costs = load_costs(args.costs, today, args.max_age_days)
        path = args.check or args.write
        if path is None:
            sys.stdout.write(render_units(costs) if args.units else render(args, costs))
            return 0
        doc = path.read_text()
        pieces, last, stale = [], 0, []
        for flags, b, e in blocks(doc, path):
            a = parse_args(flags + ["--costs", str(args.costs)])
            text = render_units(costs) if a.units else render(a, costs)
            if doc[b:e] != text:
                stale.append(" ".join(flags) or "(defaults)")
            pieces += [doc[last:b], text]
            last = e
        pieces.append(doc[last:])
        if args.write:
            path.write_text("".join(pieces))
        elif stale:
            print(f"{path}: the generated block for {', '.join(stale)} differs from scripts/capacity.py's "
                  f"output; run scripts/capacity.py --write {path}", file=sys.stderr)
            return 1
    except CostsError as e:
        print(f"capacity.py: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
