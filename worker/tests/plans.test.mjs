// Plans: the isolate cache keeps the last good plan when KV goes bad, and the push
// endpoint authenticates, validates and refuses to go back in versions.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { HEALTH_KEY, KEY, PUSH_KEY, chunkedBody, eventually, plan, sign, startWorker } from "./harness.mjs";

const TTL_MS = 1_000; // PLAN_TTL_SECS=1 in the harness
let worker;

before(async () => {
  worker = await startWorker({ ORIGIN_URL: "" });
});
after(() => worker?.close());

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function version(placement) {
  const res = await worker.get(`/v1/ad?placement=${placement}`);
  assert.equal(res.status, 200);
  return (await res.json()).plan_version;
}

describe("plan cache", () => {
  test("a client asking for many placements in turn keeps the cache within its bytes, and is served", async () => {
    // About 300 KB each (64 campaigns, 1 KB creatives): a 1 MiB cache holds three.
    const bounded = await startWorker({ ORIGIN_URL: "", PLAN_CACHE_MAX_BYTES: String(1 << 20) });
    try {
      const campaigns = Array.from({ length: 64 }, (_, i) => ({
        id: `c${i}`,
        weight: 1,
        creative: { t: "x".repeat(1_000) },
        eligibility: { platforms: [], countries: [] },
      }));
      const names = Array.from({ length: 12 }, (_, i) => `wide_${i}`);
      for (const placement of names) await bounded.putPlan(plan({ placement, campaigns }));
      for (let round = 0; round < 2; round++) {
        for (const placement of names) {
          const res = await bounded.get(`/v1/ad?placement=${placement}`);
          assert.equal(res.status, 200, placement);
          assert.equal((await res.json()).placement, placement);
        }
        const h = await (await bounded.get("/healthz", { headers: { authorization: `Bearer ${HEALTH_KEY}` } })).json();
        assert.ok(h.plans_cached_bytes <= 1 << 20, `${h.plans_cached_bytes} bytes of plans`);
        assert.ok(h.plans_cached >= 2 && h.plans_cached <= 4, `${h.plans_cached} plans cached`);
      }
    } finally {
      await bounded.close();
    }
  });

  test("a corrupt KV value keeps the last good plan; a good one replaces it", async () => {
    await worker.putPlan(plan({ placement: "cache_p", version: 1 }));
    assert.equal(await version("cache_p"), 1);

    for (const junk of [
      "{not json",
      JSON.stringify({ ...plan({ placement: "cache_p", version: 9 }), sample_rate: 7 }),
      JSON.stringify(plan({ placement: "someone_else", version: 9 })),
      JSON.stringify({ ...plan({ placement: "cache_p", version: 9 }), format: 2 }),
    ]) {
      await worker.kv.put("plan:cache_p", junk);
      await sleep(TTL_MS + 200);
      assert.equal(await version("cache_p"), 1, `still v1 after KV held ${junk.slice(0, 60)}`);
    }

    await worker.putPlan(plan({ placement: "cache_p", version: 2 }));
    await sleep(TTL_MS + 200);
    assert.equal(await version("cache_p"), 2);

    // An older plan in KV does not roll the edge back.
    await worker.putPlan(plan({ placement: "cache_p", version: 1 }));
    await sleep(TTL_MS + 200);
    assert.equal(await version("cache_p"), 2);
  });

  test("a different plan under the cached version does not replace it", async () => {
    await worker.putPlan(plan({ placement: "rival_p", version: 3 }));
    assert.equal(await version("rival_p"), 3);
    await worker.putPlan(plan({ placement: "rival_p", version: 3, no_ad_weight: 5 }));
    await sleep(TTL_MS + 200);
    let none = 0;
    for (let i = 0; i < 100; i++) {
      const body = await (await worker.get("/v1/ad?placement=rival_p&platform=ios")).json();
      assert.equal(body.plan_version, 3);
      if (body.ad === null) none += 1;
    }
    // The cached plan gives "no ad" 0.2 of 1.0; the rival would give it 5 of 5.8.
    assert.ok(none < 50, `${none} of 100 answers were "no ad": the rival plan is being served`);
  });

  test("the cache answers within the TTL without rereading KV", async () => {
    await worker.putPlan(plan({ placement: "ttl_p", version: 5 }));
    assert.equal(await version("ttl_p"), 5);
    await worker.putPlan(plan({ placement: "ttl_p", version: 6 }));
    assert.equal(await version("ttl_p"), 5, "served from the isolate within the TTL");
    await sleep(TTL_MS + 200);
    assert.equal(await version("ttl_p"), 6);
  });

  test("a placement whose only plan is corrupt is unavailable (503 JSON), not a crash", async () => {
    await worker.kv.put("plan:broken_p", "]]");
    const res = await worker.get("/v1/ad?placement=broken_p");
    assert.equal(res.status, 503);
    assert.equal((await res.json()).error.code, "plan_unavailable");
  });

  test("a deleted plan makes the placement unknown after the TTL", async () => {
    await worker.putPlan(plan({ placement: "gone_p", version: 1 }));
    assert.equal(await version("gone_p"), 1);
    await worker.kv.delete("plan:gone_p");
    await sleep(TTL_MS + 200);
    assert.equal((await worker.get("/v1/ad?placement=gone_p")).status, 404);
  });
});

describe("plan push", () => {
  const pushSign = (body, t = undefined, key = PUSH_KEY) => sign(body, t, key);
  // Sent again if the connection drops before an answer (see `retryOnDrop` in the
  // harness): the 413 test before leaves a connection the runtime closes under the
  // sender, and the next push may be dispatched on it. A push the edge did read and
  // answer would come back as `409 replayed`, which fails the test rather than hides.
  const put = (placement, body, signature = pushSign(body), target = worker) =>
    target.get(`/internal/plans/${placement}`, {
      method: "PUT",
      headers: { "content-type": "application/json", ...(signature ? { "x-allot-signature": signature } : {}) },
      body,
      retryOnDrop: true,
    });

  /** `MAX_PLAN_BYTES` of core's `plan`. */
  const LIMIT = 1024 * 1024;
  const putChunked = (placement, body, signature, signal = undefined) =>
    worker.get(`/internal/plans/${placement}`, {
      method: "PUT",
      headers: { "content-type": "application/json", "x-allot-signature": signature },
      body,
      duplex: "half",
      signal,
    });
  /** A header that passes every check but the MAC, which needs the body: what anyone can send. */
  const fresh = () => `t=${Math.floor(Date.now() / 1000)},v1=${"0".repeat(64)}`;

  /**
   * The one error format; `held_version` only on a push refused for its version, where
   * it must name `heldVersion`.
   */
  async function expectError(res, status, code, heldVersion = undefined) {
    assert.equal(res.status, status);
    const { error } = await res.json();
    assert.equal(error.code, code);
    assert.equal(typeof error.message, "string");
    if (heldVersion === undefined) assert.ok(!("held_version" in error), `${code} names a held version: ${JSON.stringify(error)}`);
    else assert.equal(error.held_version, heldVersion);
    return error;
  }

  test("a signed, valid, newer plan is stored and served at once", async () => {
    const body = JSON.stringify(plan({ placement: "push_p", version: 10 }));
    const now = Math.floor(Date.now() / 1000);
    const res = await put("push_p", body, pushSign(body, now - 2));
    assert.equal(res.status, 204);
    assert.equal(await worker.kv.get("plan:push_p"), body);
    assert.equal(await version("push_p"), 10);
    // The same plan again, signed anew (another timestamp, whenever the second turns),
    // is an idempotent retry.
    assert.equal((await put("push_p", body, pushSign(body, now - 1))).status, 204);
  });

  test("bad signatures are refused with 401, the ingest key among them", async () => {
    const body = JSON.stringify(plan({ placement: "push_p", version: 11 }));
    await expectError(await put("push_p", body, null), 401, "bad_signature");
    await expectError(await put("push_p", body, sign(body, undefined, KEY)), 401, "bad_signature");
    await expectError(await put("push_p", body, pushSign(body, undefined, "another-key-0123456789abcdef")), 401, "bad_signature");
    await expectError(await put("push_p", body, pushSign(`${body} `)), 401, "bad_signature");
    await expectError(await put("push_p", body, pushSign(body, Math.floor(Date.now() / 1000) - 3600)), 401, "bad_signature");
    await expectError(await put("push_p", body, "t=1,v1=zz"), 401, "bad_signature");
    assert.equal(await version("push_p"), 10, "nothing was written");
  });

  test("a replayed push is refused, and so is a rival plan under the held version", async () => {
    const body = JSON.stringify(plan({ placement: "replay_p", version: 3 }));
    const signature = pushSign(body);
    assert.equal((await put("replay_p", body, signature)).status, 204);
    await expectError(await put("replay_p", body, signature), 409, "replayed");
    // The tags reshuffled around the same MAC are the same signed push.
    const [t, v1] = signature.split(",");
    await expectError(await put("replay_p", body, `${v1},${t}`), 409, "replayed");
    const rival = JSON.stringify(plan({ placement: "replay_p", version: 3, no_ad_weight: 0.9 }));
    await expectError(await put("replay_p", rival), 409, "version_conflict", 3);
    assert.equal(await worker.kv.get("plan:replay_p"), body, "the first plan of version 3 stays");
  });

  test("an older version is refused with 409, in any order of arrival", async () => {
    const body = JSON.stringify(plan({ placement: "push_p", version: 9 }));
    await expectError(await put("push_p", body), 409, "stale_version", 10);
    assert.equal(JSON.parse(await worker.kv.get("plan:push_p")).version, 10);
    assert.equal(await version("push_p"), 10);
  });

  test("a push older than the plan this isolate serves is refused, whatever KV holds", async () => {
    const v6 = JSON.stringify(plan({ placement: "order_p", version: 6 }));
    const v5 = JSON.stringify(plan({ placement: "order_p", version: 5 }));
    assert.equal((await put("order_p", v6)).status, 204);
    await expectError(await put("order_p", v5), 409, "stale_version", 6);
    assert.equal(await worker.kv.get("plan:order_p"), v6);
    // KV behind what this isolate serves (an older write of an overlapping push landed
    // last, or a lagging replica): the isolate's own plan still orders the pushes.
    const v4 = JSON.stringify(plan({ placement: "order_p", version: 4 }));
    await worker.kv.put("plan:order_p", v4);
    await expectError(await put("order_p", v5), 409, "stale_version", 6);
    const rival = JSON.stringify(plan({ placement: "order_p", version: 6, no_ad_weight: 0.9 }));
    await expectError(await put("order_p", rival), 409, "version_conflict", 6);
    assert.equal(await worker.kv.get("plan:order_p"), v4, "nothing was written");
    assert.equal(await version("order_p"), 6);
  });

  test("invalid plans and mismatched placements are refused with 400", async () => {
    await expectError(await put("push_p", "{nope"), 400, "invalid_plan");
    const noWeights = { ...plan({ placement: "push_p", version: 12 }), no_ad_weight: -1 };
    await expectError(await put("push_p", JSON.stringify(noWeights)), 400, "invalid_plan");
    const other = JSON.stringify(plan({ placement: "other_p", version: 12 }));
    await expectError(await put("push_p", other), 400, "placement_mismatch");
    await expectError(await put("bad%20id", other), 400, "bad_placement");
    assert.equal(await worker.kv.get("plan:other_p"), null);
  });

  test("oversized bodies are refused with 413", async () => {
    const body = "x".repeat(1024 * 1024 + 1);
    await expectError(await put("push_p", body), 413, "body_too_large");
  });

  describe("bodies without a length", () => {
    test("a chunked push over the limit is refused once the limit is passed, and writes nothing", { timeout: 60_000 }, async () => {
      const held = JSON.stringify(plan({ placement: "chunk_p", version: 1 }));
      assert.equal((await put("chunk_p", held)).status, 204);
      const next = JSON.stringify(plan({ placement: "chunk_p", version: 2 }));
      // 100 MB behind the plan, stalled after the limit and a chunk: an edge that read the
      // whole body before judging its size would wait for the rest before answering.
      const stalled = chunkedBody(next, 100 * 1024 * 1024, { chunk: 64 * 1024, stallAfter: LIMIT + 64 * 1024 });
      await expectError(await putChunked("chunk_p", stalled.body, fresh(), AbortSignal.timeout(15_000)), 413, "body_too_large");
      stalled.end();
      // As fast as the runtime takes it: refused (or the connection closed under the
      // sender, as after any early answer) long before the end.
      const flood = chunkedBody(next, 100 * 1024 * 1024);
      const answered = await putChunked("chunk_p", flood.body, fresh()).catch((e) => e);
      if (answered instanceof Response) await expectError(answered, 413, "body_too_large");
      else assert.match(String(answered.cause?.code ?? answered.cause ?? answered), /ECONNRESET|EPIPE|UND_ERR_SOCKET|other side closed/);
      assert.ok(flood.taken() < 32 * 1024 * 1024, `the runtime took ${flood.taken()} bytes of 100 MB`);
      // Signed for real and one byte over: refused too.
      const over = next.padEnd(LIMIT + 1);
      await expectError(await putChunked("chunk_p", chunkedBody(over, over.length).body, pushSign(over)), 413, "body_too_large");
      assert.equal(await worker.kv.get("plan:chunk_p"), held, "nothing was written");
      assert.equal(await version("chunk_p"), 1);
    });

    test("a stale signature is refused before the body is read", { timeout: 60_000 }, async () => {
      const body = JSON.stringify(plan({ placement: "chunk_p", version: 3 }));
      const stalled = chunkedBody(body, 100 * 1024 * 1024, { stallAfter: 1024 });
      const stale = pushSign(body, Math.floor(Date.now() / 1000) - 3600);
      await expectError(await putChunked("chunk_p", stalled.body, stale, AbortSignal.timeout(15_000)), 401, "bad_signature");
      stalled.end();
      assert.equal(await version("chunk_p"), 1);
    });

    test("a chunked push within the limit is read whole, up to the limit exactly", async () => {
      const small = JSON.stringify(plan({ placement: "chunk_p", version: 4 }));
      assert.equal((await putChunked("chunk_p", chunkedBody(small, small.length, { chunk: 100 }).body, pushSign(small))).status, 204);
      assert.equal(await version("chunk_p"), 4);
      const full = JSON.stringify(plan({ placement: "chunk_p", version: 5 })).padEnd(LIMIT);
      assert.equal((await putChunked("chunk_p", chunkedBody(full, full.length).body, pushSign(full))).status, 204);
      assert.equal(await worker.kv.get("plan:chunk_p"), full);
      assert.equal(await version("chunk_p"), 5);
    });
  });

  test("at most two pushes are read at once; the rest are 503 busy, and the places come back when they end", { timeout: 60_000 }, async () => {
    await worker.putPlan(plan({ placement: "busy_ad_p", version: 1 }));
    const head = JSON.stringify(plan({ placement: "busy_p", version: 1 }));
    // A few bytes, then nothing: each stalls a body read for as long as its sender likes.
    const stalls = Array.from({ length: 3 }, () => {
      const abort = new AbortController();
      const body = chunkedBody(head, LIMIT - 1, { chunk: 8, stallAfter: 8 }).body;
      const stall = { abort, settled: false };
      stall.answer = putChunked("busy_p", body, fresh(), abort.signal)
        .catch((e) => e)
        .finally(() => {
          stall.settled = true;
        });
      return stall;
    });
    // Two hold the places; the third is turned away unread, and so is the next push.
    const probe = JSON.stringify(plan({ placement: "busy_p", version: 2 }));
    const busy = await eventually(async () => {
      // Signed falsely: should it find a place after all, it is read and refused (401).
      const res = await put("busy_p", probe, fresh());
      return res.status === 503 ? res : (await res.body?.cancel(), false);
    }, 10_000, "a push refused as busy");
    assert.equal(busy.headers.get("retry-after"), "1");
    await expectError(busy, 503, "busy");
    const turnedAway = await Promise.race(stalls.map((s) => s.answer));
    assert.ok(turnedAway instanceof Response, `a stalled push failed: ${turnedAway}`);
    assert.equal(turnedAway.headers.get("retry-after"), "1");
    await expectError(turnedAway, 503, "busy");
    // A declared length over the limit is still refused as such, before it takes a place.
    await expectError(await put("busy_p", "x".repeat(LIMIT + 1)), 413, "body_too_large");
    // The ads are served meanwhile.
    assert.equal(await version("busy_ad_p"), 1);
    assert.equal(stalls.filter((s) => s.settled).length, 1, "only the third stalled push was answered");

    // Their senders give up: the places come back, and a push is taken.
    for (const s of stalls) s.abort.abort();
    await eventually(async () => {
      const res = await put("busy_p", probe, pushSign(probe));
      if (res.status === 204) return true;
      await expectError(res, 503, "busy");
      return false;
    }, 10_000, "a push accepted after the stalled ones were aborted");
    assert.equal(await worker.kv.get("plan:busy_p"), probe);
    assert.equal(await version("busy_p"), 2);
  });

  test("a withdrawn placement is answered like an unknown one, and stays withdrawn", async () => {
    const live = JSON.stringify(plan({ placement: "gone_push_p", version: 4 }));
    assert.equal((await put("gone_push_p", live)).status, 204);
    assert.equal(await version("gone_push_p"), 4);
    const tomb = JSON.stringify({ ...plan({ placement: "gone_push_p", version: 5, no_ad_weight: 1, campaigns: [] }), withdrawn: true });
    assert.equal((await put("gone_push_p", tomb)).status, 204);
    const gone = await worker.get("/v1/ad?placement=gone_push_p");
    const never = await worker.get("/v1/ad?placement=never_existed_p");
    assert.equal(gone.status, 404);
    assert.equal(never.status, 404);
    assert.equal((await gone.json()).error.code, (await never.json()).error.code);
    // The withdrawn plan's version still orders it: the old plan cannot come back.
    await expectError(await put("gone_push_p", live, pushSign(live, Math.floor(Date.now() / 1000) - 2)), 409, "stale_version", 5);
    await worker.putPlan(JSON.parse(live));
    await sleep(TTL_MS + 200);
    assert.equal((await worker.get("/v1/ad?placement=gone_push_p")).status, 404, "an older KV value does not resurrect it");
    // A new version brings it back (the manager created it again).
    const again = JSON.stringify(plan({ placement: "gone_push_p", version: 6 }));
    assert.equal((await put("gone_push_p", again)).status, 204);
    assert.equal(await version("gone_push_p"), 6);
  });
});

describe("push key rotation", () => {
  const OLD = PUSH_KEY;
  const NEW = "test-push-key-NEW-0123456789abcdef";
  let rotating;
  before(async () => {
    rotating = await startWorker({ ORIGIN_URL: "", PUSH_KEYS: `${NEW}, ${OLD}` });
  });
  after(() => rotating?.close());

  const put = (body, signature) =>
    rotating.get("/internal/plans/rot_p", {
      method: "PUT",
      headers: { "content-type": "application/json", "x-allot-signature": signature },
      body,
    });

  test("an edge holding both keys accepts pushes signed with either or both", async () => {
    const t = Math.floor(Date.now() / 1000);
    const b1 = JSON.stringify(plan({ placement: "rot_p", version: 1 }));
    assert.equal((await put(b1, sign(b1, t, OLD))).status, 204, "the origin has not switched yet");
    const b2 = JSON.stringify(plan({ placement: "rot_p", version: 2 }));
    const both = `${sign(b2, t, NEW)},${sign(b2, t, OLD).split(",")[1]}`;
    assert.equal((await put(b2, both)).status, 204, "the origin signs with both");
    const b3 = JSON.stringify(plan({ placement: "rot_p", version: 3 }));
    assert.equal((await put(b3, sign(b3, t, NEW))).status, 204, "the origin has switched");
    const b4 = JSON.stringify(plan({ placement: "rot_p", version: 4 }));
    const res = await put(b4, sign(b4, t, "a-third-key-0123456789abcdef"));
    assert.equal(res.status, 401);
  });
});
