// The event outbox through an origin outage, in real workerd: the origin's port is
// closed (every send refused) for several seconds, then open again. Every event the
// edge answered for must arrive exactly once; a bound too small for the outage drops
// new events, counts every one it drops, and reports them to the origin.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { eventually, parallel, plan, startReceiver, startWorker } from "./harness.mjs";

let origin;
before(async () => {
  origin = await startReceiver();
});
after(async () => {
  await origin?.close();
});

async function health(worker) {
  return (await worker.get("/healthz")).json();
}

/** Sends `ids` as ad requests (rate 1: each one is an event). */
async function ads(worker, ids) {
  await parallel(ids.length, 8, async (i) => {
    const res = await worker.get(`/v1/ad?placement=home_feed&request_id=${ids[i]}`);
    assert.equal(res.status, 200);
    await res.json();
  });
}

/** Polls `/healthz` (each poll may carry the retries) until nothing waits. */
async function drained(worker, ms) {
  return eventually(
    async () => {
      const h = await health(worker);
      return h.events.waiting === 0 && h;
    },
    ms,
    "the outbox to empty",
  );
}

describe("the event outbox", () => {
  test("batches stay under the byte bound, so an origin's body limit refuses none", async () => {
    // 64 campaigns of 64-character ids, all eligible: each event is about 4.4 KB, so a
    // thousand of them would be a body of over 4 MB, refused whole by the origin.
    const long = (i) => `${i}`.padStart(64, "c");
    const campaigns = Array.from({ length: 64 }, (_, i) => ({
      id: long(i),
      weight: 1,
      creative: {},
      eligibility: { platforms: [], countries: [] },
    }));
    const worker = await startWorker({
      ORIGIN_URL: origin.url,
      EVENT_BATCH_MAX: "1000",
      EVENT_BATCH_MAX_BYTES: "16384",
      EVENT_BATCH_AGE_MS: "2000",
    });
    origin.maxBody = 16_384;
    try {
      await worker.putPlan(plan({ placement: "wide", sample_rate: 1, campaigns }));
      const sent = origin.sent.length;
      const before = origin.events.length;
      await parallel(200, 8, async (i) => {
        const res = await worker.get(`/v1/ad?placement=wide&request_id=wide-${i}`);
        assert.equal(res.status, 200);
        await res.json();
      });
      const h = await drained(worker, 20_000);
      assert.equal(h.events.failed + h.events.dropped + h.events.expired, 0, JSON.stringify(h.events));
      const got = origin.events.slice(before).map((e) => e.request_id);
      assert.equal(new Set(got).size, 200, "every event once");
      const bodies = origin.sent.slice(sent).map((s) => Buffer.byteLength(s.body));
      assert.ok(bodies.every((n) => n <= 16_384), `bodies of ${Math.max(...bodies)} bytes`);
      assert.ok(bodies.length >= 50, `${bodies.length} bodies for about 900 KB`);
    } finally {
      origin.maxBody = 0;
      await worker.close();
    }
  });

  test("an origin unreachable for seconds, then back: every event delivered once", async () => {
    const worker = await startWorker({ ORIGIN_URL: origin.url, EVENT_BATCH_MAX: "20", EVENT_TIMEOUT_MS: "500" });
    try {
      await worker.putPlan(plan({ sample_rate: 1 }));
      await origin.pause();
      const before = origin.events.length;
      const ids = Array.from({ length: 300 }, (_, i) => `down-${i}`);
      await ads(worker, ids.slice(0, 150));
      await new Promise((r) => setTimeout(r, 4_000));
      await ads(worker, ids.slice(150));
      await new Promise((r) => setTimeout(r, 4_000));
      const down = await health(worker);
      assert.equal(down.events.queued, ids.length);
      assert.equal(down.events.sent, 0);
      assert.equal(down.events.waiting, ids.length, "everything waits");
      assert.equal(down.events.failed + down.events.dropped + down.events.expired, 0);
      assert.ok(down.events.retried_batches > 0, "the outbox kept trying");

      await origin.resume();
      const h = await drained(worker, 40_000);
      assert.equal(h.events.sent, ids.length);
      const got = origin.events.slice(before).map((e) => e.request_id);
      assert.equal(got.length, ids.length, "no event twice");
      assert.deepEqual(got.toSorted(), ids.toSorted(), "no event lost");
    } finally {
      await origin.resume().catch(() => {});
      await worker.close();
    }
  });

  test("an outage longer than the bound: new events are dropped and every drop is counted", async () => {
    const worker = await startWorker({
      ORIGIN_URL: origin.url,
      EVENT_BATCH_MAX: "10",
      EVENT_OUTBOX_MAX_BYTES: "8192",
    });
    try {
      await worker.putPlan(plan({ sample_rate: 1, placement: "bounded" }));
      await origin.pause();
      const before = origin.events.length;
      const ids = Array.from({ length: 200 }, (_, i) => `bound-${i}`);
      await parallel(ids.length, 4, async (i) => {
        const res = await worker.get(`/v1/ad?placement=bounded&request_id=${ids[i]}`);
        assert.equal(res.status, 200, "a full outbox never fails an answer");
        await res.json();
      });
      const full = await health(worker);
      assert.ok(full.events.dropped > 0, "the bound was reached");
      assert.ok(full.events.waiting_bytes >= 8192);
      assert.equal(full.events.queued + full.events.dropped, ids.length, "every event queued or counted dropped");

      const reportsBefore = origin.reportedDrops;
      await origin.resume();
      await drained(worker, 40_000);
      // One more event: its batch carries the report if no earlier one did.
      assert.equal((await worker.get("/v1/ad?placement=bounded&request_id=bound-last")).status, 200);
      const h = await drained(worker, 10_000);
      assert.equal(h.events.sent, full.events.queued + 1);
      const got = origin.events.slice(before).map((e) => e.request_id);
      assert.equal(got.length, full.events.queued + 1, "what was queued arrived, once");
      assert.equal(new Set(got).size, got.length);
      assert.equal(origin.reportedDrops - reportsBefore, full.events.dropped, "every drop reported to the origin, once");
    } finally {
      await origin.resume().catch(() => {});
      await worker.close();
    }
  });
});
