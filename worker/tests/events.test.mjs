// Sampled events over real HTTP: the worker signs batches and sends them to the origin;
// the receiver checks every signature with node:crypto. Every request is its own coin:
// the sampled count is checked against the plan's rate, also for an id repeated by an
// app, and every sampled event the edge counted reaches the origin once.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import {
  eventually,
  parallel,
  plan,
  postImpression,
  reportOf,
  startReceiver,
  startWorker,
  tokenDecisionByte,
  tokenPattern,
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

/** The edge's counters once its outbox is empty. */
async function drained() {
  return eventually(
    async () => {
      const h = await health();
      return h.events.waiting === 0 && h;
    },
    30_000,
    "the outbox to empty",
  );
}

/** Binomial(n, p) is within `k` standard deviations of its mean. */
function plausible(count, n, p, k) {
  return Math.abs(count - n * p) < k * Math.sqrt(n * p * (1 - p));
}

describe("sampled events", () => {
  test("allocations reach the origin signed, at the plan's rate, each sampled request once", async () => {
    const n = 6_000;
    const ids = Array.from({ length: n }, (_, i) => `alloc-${i}`);
    const answers = await parallel(n, 16, async (i) => {
      const res = await worker.get(`/v1/ad?placement=home_feed&platform=iOS&country=de&request_id=${ids[i]}`);
      assert.equal(res.status, 200);
      return res.json();
    });
    const h0 = await drained();
    await new Promise((r) => setTimeout(r, 300)); // nothing more may arrive
    assert.equal(origin.badSignatures, 0);
    const got = origin.events.filter((e) => e.kind === "allocation");
    // Binomial(n, rate): the sampled count is within 5σ of n·rate (a false failure
    // once in 1.7 million runs).
    assert.ok(plausible(got.length, n, RATE, 5), `${got.length} events for ${n} requests`);
    assert.equal(got.length, h0.events.queued, "every event the edge sampled, and no other");
    assert.equal(new Set(got.map((e) => e.request_id)).size, got.length, "each request once");
    assert.ok(got.every((e) => e.request_id.startsWith("alloc-")));
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
    assert.equal(h.events.sent, got.length);
    assert.equal(h.events.failed, 0);
  });

  test("an app repeating one request id gets a coin per request, not one for the id", async () => {
    // Were the coin drawn from the id, the 500 requests would be sampled all or none:
    // 500 events (each weighing 1/rate) or an invisible app.
    const start = await drained();
    const before = origin.events.length;
    await parallel(500, 8, async () => {
      const res = await worker.get("/v1/ad?placement=home_feed&platform=web&request_id=same-id");
      assert.equal(res.status, 200);
    });
    const h = await drained();
    const got = origin.events.slice(before).filter((e) => e.request_id === "same-id");
    assert.equal(got.length, h.events.queued - start.events.queued);
    assert.ok(plausible(got.length, 500, RATE, 5), `${got.length} of 500 repeats sampled`);
  });

  test("events carry the edge's country and colo when the query has no country", async () => {
    const before = origin.events.length;
    for (let i = 0; i < 300; i++) {
      const res = await worker.get(`/v1/ad?placement=home_feed&platform=web&request_id=edge-${i}`);
      assert.equal(res.status, 200);
    }
    await drained();
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(origin.events.length > before, "some of the 300 sampled");
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

  test("a platform outside the plan's vocabulary is decided, counted and tokened as other", async () => {
    // B is for ios and android; the plan lists web besides. An app naming a new
    // platform per request must not add a field per platform to the origin's windows.
    await worker.putPlan(plan({ placement: "vocab_p", version: 2, no_ad_weight: 0, platforms: ["web"] }));
    const asked = ["iOS", "WEB", "Other", "xbox", "made-up-1", "made-up-2", "ios2"];
    const before = origin.events.length;
    const answers = [];
    for (const [i, platform] of asked.entries()) {
      const res = await worker.get(`/v1/ad?placement=vocab_p&platform=${platform}&country=US&request_id=v-${i}`);
      assert.equal(res.status, 200);
      answers.push(await res.json());
    }
    await eventually(() => origin.events.length - before >= asked.length, 10_000, "the vocabulary's events");
    const got = new Map(origin.events.slice(before).map((e) => [e.request_id, e]));
    const seen = ["ios", "web", "other", "other", "other", "other", "other"];
    for (const [i, platform] of seen.entries()) {
      const e = got.get(`v-${i}`);
      assert.equal(e.platform, platform, asked[i]);
      assert.deepEqual(e.eligible, platform === "ios" ? ["A", "B"] : ["A"], asked[i]);
    }
    // The impression names its allocation's platform: `other`, not the made-up one.
    const shown = 3; // xbox, given A: the plan has no "no ad"
    const reported = origin.events.length;
    assert.equal((await postImpression(worker, reportOf(answers[shown]))).status, 204);
    await eventually(() => origin.events.length > reported, 10_000, "the impression");
    const impression = origin.events.slice(reported).find((e) => e.kind === "impression");
    assert.equal(impression.request_id, `v-${shown}`);
    assert.equal(impression.platform, "other");
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
      assert.match(a.impression_token, tokenPattern(null));
      return a;
    });
    await drained();
    await new Promise((r) => setTimeout(r, 300));
    const expected = new Set(origin.events.filter((e) => e.placement === "imp_p").map((e) => e.request_id));
    assert.ok(plausible(expected.size, ids.length, RATE, 5), `${expected.size} allocations sampled`);
    // The app holds the token before it shows the ad: the decision byte it can read
    // must not tell it which ads are counted (in clear, all 1,000 would agree).
    const agree = answers.filter((a) => (tokenDecisionByte(a.impression_token) === 1) === expected.has(a.request_id));
    assert.ok(plausible(agree.length, answers.length, 0.5, 5), `the token's byte told ${agree.length} of 1000 decisions`);
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

  test("a slow origin changes neither the answers nor their latency, and is retried until it answers", async () => {
    origin.mode = "slow";
    origin.slowMs = 2_000; // beyond the worker's 500 ms send timeout
    const start = await health();
    const ids = Array.from({ length: 200 }, (_, i) => `slow-${i}`);
    const latencies = await parallel(ids.length, 8, async (i) => {
      const t0 = performance.now();
      const res = await worker.get(`/v1/ad?placement=home_feed&request_id=${ids[i]}`);
      assert.equal(res.status, 200);
      await res.json();
      return performance.now() - t0;
    });
    latencies.sort((a, b) => a - b);
    const p99 = latencies[Math.floor(latencies.length * 0.99)];
    assert.ok(p99 < 250, `p99 ${p99.toFixed(1)} ms while the origin stalls`);
    // Timed out, so sent again (the same bytes): kept waiting, never counted lost.
    await eventually(
      async () => (await health()).events.retried_batches > start.events.retried_batches,
      15_000,
      "a retried batch",
    );
    origin.mode = "ok";
    const h = await eventually(
      async () => {
        const h = await health();
        return h.events.waiting === 0 && h;
      },
      30_000,
      "the outbox to empty",
    );
    assert.equal(h.events.failed, start.events.failed);
    assert.equal(h.events.expired, 0);
    await new Promise((r) => setTimeout(r, 2_500)); // the answers the worker gave up on
    const got = origin.events.filter((e) => e.request_id.startsWith("slow-")).map((e) => e.request_id);
    const sampled = h.events.queued - start.events.queued;
    assert.ok(sampled > 0);
    assert.equal(got.length, sampled, "every sampled event stored");
    assert.equal(new Set(got).size, got.length, "once");
    assert.ok(origin.duplicates > 0, "the retries of stored bodies were recognised");
  });

  test("a failing origin gets the same signed body until it stores it", async () => {
    origin.mode = "fail";
    const start = await health();
    const startSent = origin.sent.length;
    for (let i = 0; i < 400; i++) {
      const res = await worker.get(`/v1/ad?placement=home_feed&request_id=fail-${i}`);
      assert.equal(res.status, 200);
    }
    const sampled = (await health()).events.queued - start.events.queued;
    assert.ok(sampled > 0);
    // Backoff from 0.5 s: three tries of the first batch within a few seconds.
    await eventually(
      async () => {
        await health(); // a request: carries the retries if no driver runs
        const first = origin.sent.slice(startSent)[0];
        return first && origin.sent.slice(startSent).filter((s) => s.body === first.body).length >= 3;
      },
      20_000,
      "three tries of a batch",
    );
    const tries = new Map();
    for (const { signature, body } of origin.sent.slice(startSent)) {
      tries.set(body, [...(tries.get(body) ?? []), signature]);
    }
    for (const signatures of tries.values()) {
      assert.ok(signatures.every((s) => s === signatures[0]), "signed once, sent as often as needed");
    }
    const during = await health();
    assert.equal(during.events.failed, start.events.failed, "a 5xx loses nothing");
    assert.equal(during.events.sent, start.events.sent);
    assert.ok(during.events.waiting >= sampled);
    origin.mode = "ok";
    await eventually(
      async () => {
        const h = await health();
        return h.events.sent - start.events.sent === sampled && h.events.waiting === 0;
      },
      40_000,
      "delivery once the origin is back",
    );
    const got = origin.events.filter((e) => e.request_id.startsWith("fail-")).map((e) => e.request_id);
    assert.equal(got.length, sampled, "every event");
    assert.equal(new Set(got).size, got.length, "once");
  });
});
