// The spread in real workerd: the worker chooses with its placement's `Spread`
// (allot_core::spread, kept in the isolate's plan cache), so each campaign's deliveries
// follow what the requests of each eligibility pattern owed it (the sum of its odds over
// them) to a request or two, where an independent random pick is off by the binomial
// √(n·s·(1−s)). Over n requests of one pattern that is n·share. Each test counts the ads in the answers
// and holds every outcome (campaigns and "no ad") to ±4 of what it is owed: a bound a
// random pick almost never meets at these n (the odds are given with each test), so
// these tests fail on a worker that picks at random.
//
// A request that the harness had to send again after a dropped connection (see
// `fetchRetryingGets`) may have been chosen for without its answer being counted; that
// can cost one request of the margin, no more.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { PUSH_KEY, parallel, plan, sign, startWorker, tokenPattern } from "./harness.mjs";

/** How far from n·share an outcome's count may be. */
const BOUND = 4;
/** Plan v1's shares of the pattern the tests watch (every campaign eligible). */
const SHARES = { A: 0.2, B: 0.3, C: 0.25, D: 0.02, none: 0.23 };
/** Plan v2's shares for the fault test: every weight moves. */
const SHARES_V2 = { A: 0.05, B: 0.45, C: 0.1, D: 0.1, none: 0.3 };
const ANY = { platforms: [], countries: [] };
const LETTERS = [..."ABCDEFGHIJKLMNOPQRSTUVWXYZ"];
const COUNTRIES = LETTERS.flatMap((a) => LETTERS.map((b) => a + b));

let worker;
before(async () => {
  // EDGE_KEY is set (impression tokens), ORIGIN_URL is not (no events to send).
  worker = await startWorker({ ORIGIN_URL: "", TEST_TRAPS: "on" });
});
after(() => worker?.close());

/** A plan whose every-campaign-eligible pattern has `shares`, plus `extra` campaigns. */
function sharesPlan(placement, shares, { version = 1, extra = [] } = {}) {
  const campaigns = Object.entries(shares)
    .filter(([id]) => id !== "none")
    .map(([id, weight]) => ({ id, weight, creative: { img: `${id}.png` }, eligibility: ANY }));
  return plan({ placement, version, no_ad_weight: shares.none, campaigns: [...campaigns, ...extra] });
}

/** The ids of `p`'s campaigns eligible for a request, by the plan's rules. */
function eligibleIds(p, platform, country) {
  const ok = (list, v, norm) => list.length === 0 || (v !== undefined && list.some((x) => norm(x) === norm(v)));
  return p.campaigns
    .filter((c) => ok(c.eligibility.platforms, platform, (s) => s.toLowerCase()))
    .filter((c) => ok(c.eligibility.countries, country, (s) => s.toUpperCase()))
    .map((c) => c.id);
}

/** One `/v1/ad` answer, checked against the plan's rules; returns it. */
async function ad(p, { platform, country } = {}) {
  const q = new URLSearchParams({ placement: p.placement });
  if (platform !== undefined) q.set("platform", platform);
  if (country !== undefined) q.set("country", country);
  const res = await worker.get(`/v1/ad?${q}`);
  const body = await res.json();
  assert.equal(res.status, 200, `${q} → ${res.status} ${JSON.stringify(body)}`);
  assert.equal(body.placement, p.placement);
  assert.match(body.request_id, /^[0-9a-f]{32}$/);
  if (body.ad !== null) {
    // The harness's edge says FR when the query names no country.
    const eligible = eligibleIds(p, platform, country ?? "FR");
    assert.ok(eligible.includes(body.ad.id), `${q}: ${body.ad.id} is not eligible (${eligible})`);
    assert.deepEqual(body.ad.creative, p.campaigns.find((c) => c.id === body.ad.id).creative);
    assert.match(body.impression_token, tokenPattern(platform));
  } else {
    assert.equal(body.impression_token, undefined);
  }
  return body;
}

const outcome = (answer) => answer.ad?.id ?? "none";

function count(answers) {
  const counts = {};
  for (const a of answers) counts[outcome(a)] = (counts[outcome(a)] ?? 0) + 1;
  return counts;
}

/** Every outcome of `answers` within ±BOUND of n·share, and no other outcome. */
function assertSpread(t, answers, shares, what) {
  const n = answers.length;
  const counts = count(answers);
  const report = Object.entries(shares)
    .map(([id, s]) => `${id} ${counts[id] ?? 0}/${(n * s).toFixed(1)}`)
    .join(", ");
  t.diagnostic(`${what}: n = ${n}; count/expected: ${report}`);
  assert.deepEqual(Object.keys(counts).filter((id) => !(id in shares)), [], `${what}: outcomes outside the plan`);
  for (const [id, s] of Object.entries(shares)) {
    const off = (counts[id] ?? 0) - n * s;
    assert.ok(Math.abs(off) <= BOUND, `${what}: ${id} is off by ${off.toFixed(1)} (n = ${n}; ${report})`);
  }
}

/** `a` spread evenly through `b`, in order, starting with `a`'s first. */
function interleave(a, b) {
  const out = [];
  for (let i = 0, j = 0; i < a.length || j < b.length; ) {
    const aBehind = i * b.length <= j * a.length;
    if (i < a.length && (aBehind || j >= b.length)) out.push(a[i++]);
    else out.push(b[j++]);
  }
  return out;
}

async function health() {
  const res = await worker.get("/healthz");
  assert.equal(res.status, 200);
  return res.json();
}

describe("the spread", () => {
  test("the promise: 2,000 requests of one pattern, each campaign within ±4 of its share", async (t) => {
    // E is never eligible for iOS, so the pattern's shares are SHARES exactly.
    const extra = [{ id: "E", weight: 0.1, creative: { img: "E.png" }, eligibility: { platforms: ["android"], countries: [] } }];
    const p = sharesPlan("spread_promise", SHARES, { extra });
    await worker.putPlan(p);
    // n = 2,000. A random pick's counts are binomial with standard deviations A 17.9,
    // B 20.5, C 19.4, D 6.3, none 18.8; each meets ±4 with probability 0.20, 0.17,
    // 0.18, 0.53, 0.19, and all five together (multinomial) with about 0.0026: one run
    // in 400.
    const n = 2_000;
    const answers = await parallel(n, 16, () => ad(p, { platform: "ios", country: "DE" }));
    assertSpread(t, answers, SHARES, "ios/DE");
  });

  test("hostile: a client cycling through every platform × country gets eligible answers, and a watched pattern still gets its shares", async (t) => {
    // Ten "bit" campaigns make the country alone pick among 676 patterns (bit j is
    // eligible where bit j of the country's index is set), and two platform campaigns
    // triple that: some 2,000 patterns, each with its own odds. None of them is
    // eligible for DE, so a watched client's iOS/DE has SHARES.
    const bits = Array.from({ length: 10 }, (_, j) => ({
      id: `bit${j}`,
      weight: 0.05,
      creative: { img: `bit${j}.png` },
      eligibility: { platforms: [], countries: COUNTRIES.filter((c, i) => c !== "DE" && (i >> j) & 1) },
    }));
    const platformOnly = ["android", "web"].map((pl) => ({
      id: `only_${pl}`,
      weight: 0.1,
      creative: { img: `only_${pl}.png` },
      eligibility: { platforms: [pl], countries: [] },
    }));
    const p = sharesPlan("spread_hostile", SHARES, { extra: [...bits, ...platformOnly] });
    await worker.putPlan(p);

    // Unknown platforms, a case variant, the longest valid one, none at all; every
    // two-letter country and none (the edge's FR). The watched client's requests go
    // evenly through the flood, 16 in flight.
    const platforms = [undefined, "ios", "ANDROID", "web", "smart-tv", "x".repeat(32)];
    const flood = platforms.flatMap((platform) => [undefined, ...COUNTRIES].map((country) => ({ platform, country })));
    const n = 2_000;
    const mine = { platform: "ios", country: "DE", mine: true };
    // The watched pattern is seen first, so it has one of the spread's streams (core
    // keeps 32 per placement; the flood's other patterns past them get plain picks).
    const cachedBefore = (await health()).plans_cached;
    const first = await ad(p, mine);
    const jobs = interleave(Array(n - 1).fill(mine), flood);
    const answers = await parallel(jobs.length, 16, (i) => ad(p, jobs[i]));

    // Every answer valid and eligible (checked in `ad`), over all these patterns.
    const patterns = new Set(jobs.map((j) => eligibleIds(p, j.platform, j.country ?? "FR").join()));
    t.diagnostic(`${jobs.length} requests (${flood.length} of the flood), ${patterns.size} eligibility patterns`);
    assert.ok(patterns.size > 1_000, `${patterns.size} patterns`);
    const outcomes = [...p.campaigns.map((c) => c.id), "none"];
    const delivered = count(answers);
    assert.deepEqual(outcomes.filter((id) => !delivered[id]), [], "every outcome is chosen some time");
    // The same isolate still answers, its cache whole: no trap replaced it.
    const afterFlood = await health();
    assert.equal(afterFlood.status, "ok");
    assert.equal(afterFlood.plans_cached, cachedBefore + 1);

    // The watched client: its pattern's stream is its own, whatever the flood does
    // around it, so each of its outcomes is held to ±4 of n·share. A random pick meets
    // that about one run in 400 (the promise test's odds).
    const watchedAnswers = [first, ...answers.filter((_, i) => jobs[i].mine)];
    assert.equal(watchedAnswers.length, n);
    assertSpread(t, watchedAnswers, SHARES, "the watched ios/DE inside the flood");
  });

  test("fault: the isolate replaced and a new plan version pushed mid-stream, each segment within ±4", async (t) => {
    const v1 = sharesPlan("spread_fault", SHARES);
    const v2 = sharesPlan("spread_fault", SHARES_V2, { version: 2 });
    await worker.putPlan(v1);
    const mine = { platform: "ios", country: "DE" };
    const trap = async () => {
      const res = await worker.get("/internal/trap");
      assert.equal(res.status, 500);
      assert.equal((await res.json()).error.code, "internal");
      assert.equal((await health()).plans_cached, 0, "a fresh instance, its cache empty");
    };
    const push = async (p) => {
      const body = JSON.stringify(p);
      const res = await worker.get(`/internal/plans/${p.placement}`, {
        method: "PUT",
        headers: { "content-type": "application/json", "x-allot-signature": sign(body, undefined, PUSH_KEY) },
        body,
      });
      assert.equal(res.status, 204, await res.text());
    };
    const byVersion = (answers, version) => answers.filter((a) => a.plan_version === version);

    // A random pick's odds of meeting ±4 in every outcome: about 0.01 for n = 1,000
    // under either plan (v2's standard deviations: A 6.9, B 15.7, C 9.5, D 9.5, none
    // 14.5), about 0.03 for 500; over the four segments together, below 10⁻⁶.
    // 1. The first instance, v1.
    const first = await parallel(1_000, 16, () => ad(v1, mine));
    assertSpread(t, first, SHARES, "v1, first instance");
    // 2. A trap: the next instance starts its spread afresh, plan v1 again from KV.
    await trap();
    // 3. v2 is pushed while requests are in flight. The isolate switches plans between
    //    two choices, so the answers split by plan_version into two runs of the stream.
    const PUSH_AT = 800;
    // (`ad` checks answers against v1's rules and creatives, which v2 shares.)
    const second = await parallel(2_000, 16, async (i) => {
      if (i === PUSH_AT) await push(v2);
      return ad(v1, mine);
    });
    const [old, neu] = [byVersion(second, 1), byVersion(second, 2)];
    assert.equal(old.length + neu.length, second.length);
    assert.ok(old.length >= 500 && neu.length >= 500, `${old.length} under v1, ${neu.length} under v2`);
    assertSpread(t, old, SHARES, "v1, second instance");
    assertSpread(t, neu, SHARES_V2, "v2 pushed mid-stream, second instance");
    // 4. Another trap: the third instance reads v2 from KV (the push stored it).
    await trap();
    const third = await parallel(1_000, 16, () => ad(v2, mine));
    assert.ok(third.every((a) => a.plan_version === 2));
    assertSpread(t, third, SHARES_V2, "v2, third instance");
  });
});
