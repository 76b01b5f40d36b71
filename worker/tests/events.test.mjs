// Sampled events over real HTTP: the worker signs batches and sends them to the origin;
// the receiver checks every signature with node:crypto. The sampled set is predicted
// request by request from the keyed sampling hash (computed here independently), and
// its size is checked against the plan's rate.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import {
  eventually,
  parallel,
  plan,
  postImpression,
  reportOf,
  samplePoint,
  startReceiver,
  startWorker,
} from "./harness.mjs";

const RATE = 0.1;
let worker;
let origin;

before(async () => {
  origin = await startReceiver();
  worker = await startWorker({ ORIGIN_URL: origin.url, EVENT_BATCH_MAX: "50", EVENT_TIMEOUT_MS: "500" });
  await worker.putPlan(plan({ sample_rate: RATE, version: 4 }));
});
after(async () => {
  await worker?.close();
  await origin?.close();
});

async function health() {
  return (await worker.get("/healthz")).json();
}

describe("sampled events", () => {
  test("allocations reach the origin signed, at the plan's rate, for exactly the sampled ids", async () => {
    const n = 6_000;
    const ids = Array.from({ length: n }, (_, i) => `alloc-${i}`);
    const answers = await parallel(n, 16, async (i) => {
      const res = await worker.get(`/v1/ad?placement=home_feed&platform=iOS&country=de&request_id=${ids[i]}`);
      assert.equal(res.status, 200);
      return res.json();
    });
    const expected = new Set(ids.filter((id) => samplePoint(id) < RATE));
    // Binomial(n, rate): the sampled count is within 3σ of n·rate.
    const sigma = Math.sqrt(n * RATE * (1 - RATE));
    assert.ok(Math.abs(expected.size - n * RATE) < 3 * sigma, `${expected.size} sampled of ${n}`);

    await eventually(() => origin.events.length >= expected.size, 15_000, "sampled events");
    await new Promise((r) => setTimeout(r, 300)); // nothing more may arrive
    assert.equal(origin.badSignatures, 0);
    const got = origin.events.filter((e) => e.kind === "allocation");
    assert.equal(got.length, expected.size);
    assert.deepEqual(new Set(got.map((e) => e.request_id)), expected);
    assert.ok(Math.abs(got.length - n * RATE) < 3 * sigma, `${got.length} events for ${n} requests`);
    assert.ok(origin.batches < got.length, `batched: ${origin.batches} requests for ${got.length} events`);

    const byId = new Map(answers.map((a) => [a.request_id, a]));
    for (const e of got) {
      assert.equal(e.placement, "home_feed");
      assert.equal(e.plan_version, 4);
      assert.equal(e.sample_rate, RATE);
      assert.equal(e.platform, "ios");
      assert.equal(e.country, "DE");
      assert.deepEqual(e.eligible, ["A", "B", "C"]);
      assert.equal(e.ad_id, byId.get(e.request_id).ad?.id ?? null, "the event records the answer given");
      assert.ok(Math.abs(e.event_time_ms - Date.now()) < 60_000);
    }
    const h = await health();
    assert.equal(h.events.sent, expected.size);
    assert.equal(h.events.failed, 0);
  });

  test("events carry the edge's country and colo when the query has no country", async () => {
    const before = origin.events.length;
    const ids = Array.from({ length: 300 }, (_, i) => `edge-${i}`).filter((id) => samplePoint(id) < RATE);
    for (const id of ids) {
      const res = await worker.get(`/v1/ad?placement=home_feed&platform=web&request_id=${id}`);
      assert.equal(res.status, 200);
    }
    await eventually(() => origin.events.length - before >= ids.length, 10_000, "edge events");
    for (const e of origin.events.slice(before)) {
      assert.equal(e.country, "FR");
      assert.equal(e.colo, "CDG");
      assert.equal(e.platform, "web");
      assert.deepEqual(e.eligible, ["A", "C"]);
    }
  });

  test("an unknown edge country (XX) is no country: it matches no list and is not recorded", async () => {
    const unknown = await startWorker({ ORIGIN_URL: origin.url }, { cf: { country: "XX", colo: "CDG" } });
    try {
      const onlyXX = { ...plan().campaigns[2], eligibility: { platforms: [], countries: ["XX"] } };
      await unknown.putPlan(plan({ placement: "xx_p", campaigns: [onlyXX], no_ad_weight: 0 }));
      const before = origin.events.length;
      for (let i = 0; i < 20; i++) {
        const body = await (await unknown.get(`/v1/ad?placement=xx_p&request_id=xx-${i}`)).json();
        assert.equal(body.ad, null);
      }
      await eventually(() => origin.events.length - before >= 20, 10_000, "events of the XX edge");
      for (const e of origin.events.slice(before)) {
        assert.equal(e.placement, "xx_p");
        assert.equal(e.country, null);
        assert.deepEqual(e.eligible, []);
      }
    } finally {
      await unknown.close();
    }
  });

  test("impressions are sampled exactly when their allocations were, at the allocation's version and rate", async () => {
    // Ads under version 7 at rate 0.1; the plan then changes (version 8, rate 0.5)
    // before the app reports them: the impressions still follow version 7's decision.
    const only = (weight) => plan({ placement: "imp_p", no_ad_weight: 0, campaigns: [{ ...plan().campaigns[0], weight }] });
    await worker.putPlan({ ...only(1), version: 7, sample_rate: RATE });
    const ids = Array.from({ length: 1_000 }, (_, i) => `imp-${i}`);
    const answers = await parallel(ids.length, 16, async (i) => {
      const res = await worker.get(`/v1/ad?placement=imp_p&request_id=${ids[i]}`);
      assert.equal(res.status, 200);
      const a = await res.json();
      assert.equal(a.ad.id, "A");
      assert.match(a.impression_token, /^[A-Za-z0-9_-]{60}$/);
      return a;
    });
    const expected = new Set(ids.filter((id) => samplePoint(id) < RATE));
    await eventually(
      () => origin.events.filter((e) => e.placement === "imp_p").length >= expected.size,
      10_000,
      "allocations",
    );
    await worker.putPlan({ ...only(1), version: 8, sample_rate: 0.5 });
    await eventually(async () => (await (await worker.get("/v1/ad?placement=imp_p")).json()).plan_version === 8, 5_000, "v8");
    const before = origin.events.length;
    await parallel(answers.length, 16, async (i) => {
      const res = await postImpression(worker, reportOf(answers[i]));
      assert.equal(res.status, 204);
    });
    await eventually(() => origin.events.length - before >= expected.size, 10_000, "impressions");
    await new Promise((r) => setTimeout(r, 300)); // nothing more may arrive
    const got = origin.events.slice(before).filter((e) => e.kind === "impression");
    assert.equal(got.length, expected.size);
    assert.deepEqual(new Set(got.map((e) => e.request_id)), expected);
    const issued = new Map(answers.map((a) => [a.request_id, a]));
    for (const e of got) {
      assert.equal(e.placement, "imp_p");
      assert.equal(e.ad_id, "A");
      assert.equal(e.plan_version, 7);
      assert.equal(e.sample_rate, RATE);
      assert.ok(issued.has(e.request_id));
      assert.ok(Math.abs(e.event_time_ms - Date.now()) < 60_000);
    }
    assert.equal(origin.badSignatures, 0);
  });

  test("a slow origin changes neither the answers nor their latency, and is counted", async () => {
    origin.mode = "slow";
    origin.slowMs = 2_000; // beyond the worker's 500 ms send timeout
    const start = await health();
    const latencies = await parallel(200, 8, async (i) => {
      const t0 = performance.now();
      const res = await worker.get(`/v1/ad?placement=home_feed&request_id=slow-${i}`);
      assert.equal(res.status, 200);
      await res.json();
      return performance.now() - t0;
    });
    latencies.sort((a, b) => a - b);
    const p99 = latencies[Math.floor(latencies.length * 0.99)];
    assert.ok(p99 < 250, `p99 ${p99.toFixed(1)} ms while the origin stalls`);
    const sampled = Array.from({ length: 200 }, (_, i) => `slow-${i}`).filter((id) => samplePoint(id) < RATE).length;
    assert.ok(sampled > 0);
    // Timed out, retried once, then counted as failed — never silently dropped.
    const h = await eventually(
      async () => {
        const h = await health();
        return h.events.failed - start.events.failed >= sampled && h;
      },
      15_000,
      "failed events to be counted",
    );
    assert.ok(h.events.retried_batches > start.events.retried_batches);
    assert.ok(h.events.failed_batches > start.events.failed_batches);
    origin.mode = "ok";
  });

  test("a failing origin is retried once with the same signed body, then counted", async () => {
    origin.mode = "fail";
    const start = await health();
    const startRequests = origin.requests;
    const startSent = origin.sent.length;
    const ids = Array.from({ length: 400 }, (_, i) => `fail-${i}`).filter((id) => samplePoint(id) < RATE);
    for (const id of ids) {
      const res = await worker.get(`/v1/ad?placement=home_feed&request_id=${id}`);
      assert.equal(res.status, 200);
    }
    const h = await eventually(
      async () => {
        const h = await health();
        return h.events.failed - start.events.failed === ids.length && h;
      },
      10_000,
      "failed events",
    );
    const batches = h.events.failed_batches - start.events.failed_batches;
    assert.ok(batches >= 1);
    assert.equal(origin.requests - startRequests, 2 * batches, "each failed batch was tried twice");
    // Signed once: the retry is the same bytes under the same header, so an origin that
    // stored the first try recognises the second.
    const tries = new Map();
    for (const { signature, body } of origin.sent.slice(startSent)) {
      tries.set(body, [...(tries.get(body) ?? []), signature]);
    }
    assert.equal(tries.size, batches);
    for (const signatures of tries.values()) {
      assert.deepEqual(signatures, [signatures[0], signatures[0]], "two tries, one signature");
    }
    origin.mode = "ok";
  });
});
