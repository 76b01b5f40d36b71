// Recovery after a Wasm trap, in real workerd. Nothing a client sends can make the
// worker panic, so the traps here go through the test-only route `/internal/trap`
// (present only with the TEST_TRAPS binding, which production never sets): a panic
// inside the call, after an await, and in `wait_until` after the answer left. Each
// time the request that trapped gets the one JSON error format (500), and the requests
// after it are served by a fresh instance: its counters start from zero and its plan
// cache is empty, and the routes that depend on KV and on the origin work again.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { eventually, parallel, plan, startReceiver, startWorker } from "./harness.mjs";

let origin;
let worker;

before(async () => {
  origin = await startReceiver();
  worker = await startWorker({ ORIGIN_URL: origin.url, TEST_TRAPS: "on", EVENT_BATCH_MAX: "10" });
  await worker.putPlan(plan({ sample_rate: 1 }));
  await worker.putPlan(plan({ sample_rate: 1, placement: "side_feed" }));
});
after(async () => {
  await worker?.close();
  await origin?.close();
});

async function health() {
  const res = await worker.get("/healthz");
  assert.equal(res.status, 200);
  return res.json();
}

async function ad(placement, requestId) {
  const res = await worker.get(`/v1/ad?placement=${placement}&request_id=${requestId}`);
  assert.equal(res.status, 200, `${placement} ${requestId}`);
  const body = await res.json();
  assert.equal(body.placement, placement);
  assert.equal(body.request_id, requestId);
  return body;
}

/** Both placements cached and some events sent: an instance with state to lose. */
async function warmUp(tag) {
  await parallel(20, 4, (i) => ad(i % 2 ? "home_feed" : "side_feed", `${tag}-warm-${i}`));
  const h = await eventually(
    async () => {
      const h = await health();
      return h.events.waiting === 0 && h;
    },
    10_000,
    "the warm-up's events to leave",
  );
  assert.equal(h.plans_cached, 2);
  assert.ok(h.events.sent >= 20);
}

async function assertTrapAnswer(res) {
  assert.equal(res.status, 500);
  assert.match(res.headers.get("content-type"), /^application\/json/);
  const body = await res.json();
  assert.deepEqual(Object.keys(body), ["error"]);
  assert.equal(body.error.code, "internal");
  assert.equal(typeof body.error.message, "string");
}

/** The instance answering now is a fresh one, and it works. */
async function assertFreshAndWorking(tag) {
  const first = await health();
  assert.equal(first.plans_cached, 0, "a fresh instance has an empty plan cache");
  assert.equal(first.events.queued, 0, "a fresh instance has queued nothing yet");
  const answers = await parallel(50, 8, (i) => ad("home_feed", `${tag}-after-${i}`));
  assert.ok(answers.every((a) => a.plan_version === 1));
  assert.equal((await health()).plans_cached, 1);
  // A placement without a plan is still answered from KV as unknown.
  const missing = await worker.get("/v1/ad?placement=nowhere");
  assert.equal(missing.status, 404);
  assert.equal((await missing.json()).error.code, "unknown_placement");
}

describe("a Wasm trap", () => {
  test("inside the call: that request gets JSON 500, the next ones a fresh instance", async () => {
    await warmUp("now");
    await assertTrapAnswer(await worker.get("/internal/trap"));
    await assertFreshAndWorking("now");
  });

  test("after an await: the waiting request gets JSON 500, the next ones a fresh instance", async () => {
    await warmUp("later");
    await assertTrapAnswer(await worker.get("/internal/trap?when=later"));
    await assertFreshAndWorking("later");
  });

  test("in wait_until after the answer: the next request still gets a fresh instance", async () => {
    await warmUp("background");
    const res = await worker.get("/internal/trap?when=background");
    assert.equal(res.status, 202);
    await res.body?.cancel();
    // The trap goes off 20 ms after the answer.
    await new Promise((r) => setTimeout(r, 300));
    await assertFreshAndWorking("background");
  });

  test("the outbox of the fresh instance delivers every event, signed, once", async () => {
    await warmUp("outbox");
    await assertTrapAnswer(await worker.get("/internal/trap"));
    const before = origin.events.length;
    const badBefore = origin.badSignatures;
    const ids = Array.from({ length: 100 }, (_, i) => `outbox-after-${i}`);
    await parallel(ids.length, 8, (i) => ad("home_feed", ids[i]));
    await eventually(() => origin.events.length - before >= ids.length, 15_000, "events after the trap");
    const got = origin.events.slice(before).map((e) => e.request_id);
    assert.deepEqual(got.toSorted(), ids.toSorted(), "every event after the trap, once");
    assert.equal(origin.badSignatures, badBefore);
    // The origin has the last batch before the worker has its answer and counts it sent.
    const h = await eventually(
      async () => {
        const h = await health();
        return h.events.waiting === 0 && h.events.sent >= ids.length && h;
      },
      10_000,
      "the worker to count the batches it sent",
    );
    assert.equal(h.events.sent, ids.length);
    assert.equal(h.events.failed + h.events.dropped + h.events.expired, 0);
  });

  test("an unknown trap is a bad request, and traps nothing", async () => {
    await warmUp("unknown");
    const res = await worker.get("/internal/trap?when=tomorrow");
    assert.equal(res.status, 400);
    assert.equal((await res.json()).error.code, "bad_query");
    assert.equal((await health()).plans_cached, 2, "the same instance still answers");
  });
});

describe("hostile requests", () => {
  test("crafted inputs get 4xx JSON from the same instance, never a trap", async () => {
    await warmUp("hostile");
    const long = "x".repeat(64 * 1024);
    const cases = [
      [`/v1/ad?placement=${long}`, {}],
      [`/v1/ad?placement=home_feed&request_id=${long}`, {}],
      ["/v1/ad?placement=%FF%FE&platform=%C0%80", {}],
      ["/v1/ad?placement=home_feed&country=%00%00", {}],
      ["/v1/ad?placement=home_feed&placement=home_feed&&&=&%", {}],
      // Refused before the body is read: see `retryOnDrop` in the harness.
      ["/v1/impression", { method: "POST", body: "[".repeat(100_000), retryOnDrop: true }],
      ["/v1/impression", { method: "POST", body: JSON.stringify({ request_id: long, placement: "home_feed", ad_id: "A", impression_token: long }), retryOnDrop: true }],
      ["/internal/plans/home_feed", { method: "PUT", body: "{}", headers: { "x-allot-signature": `t=99999999999999999999,v1=${"0".repeat(64)}` } }],
      ["/internal/plans/%2e%2e", { method: "PUT", body: long, retryOnDrop: true }],
    ];
    for (const [path, init] of cases) {
      const res = await worker.get(path, init);
      assert.ok(res.status >= 400 && res.status < 500, `${path.slice(0, 60)} → ${res.status}`);
      const body = await res.json();
      assert.equal(typeof body.error.code, "string");
    }
    assert.equal((await health()).plans_cached, 2, "no trap replaced the instance");
  });
});
