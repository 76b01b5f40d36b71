// Plans: the isolate cache keeps the last good plan when KV goes bad, and the push
// endpoint authenticates, validates and refuses to go back in versions.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { KEY, plan, sign, startWorker } from "./harness.mjs";

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
  const put = (placement, body, signature = sign(body)) =>
    worker.get(`/internal/plans/${placement}`, {
      method: "PUT",
      headers: { "content-type": "application/json", ...(signature ? { "x-allot-signature": signature } : {}) },
      body,
    });

  async function expectError(res, status, code) {
    assert.equal(res.status, status);
    assert.equal((await res.json()).error.code, code);
  }

  test("a signed, valid, newer plan is stored and served at once", async () => {
    const body = JSON.stringify(plan({ placement: "push_p", version: 10 }));
    const res = await put("push_p", body);
    assert.equal(res.status, 204);
    assert.equal(await worker.kv.get("plan:push_p"), body);
    assert.equal(await version("push_p"), 10);
    // The same version again is an idempotent retry.
    assert.equal((await put("push_p", body)).status, 204);
  });

  test("bad signatures are refused with 401", async () => {
    const body = JSON.stringify(plan({ placement: "push_p", version: 11 }));
    await expectError(await put("push_p", body, null), 401, "bad_signature");
    await expectError(await put("push_p", body, sign(body, undefined, "another-key-0123456789abcdef")), 401, "bad_signature");
    await expectError(await put("push_p", body, sign(`${body} `)), 401, "bad_signature");
    await expectError(await put("push_p", body, sign(body, Math.floor(Date.now() / 1000) - 3600)), 401, "bad_signature");
    await expectError(await put("push_p", body, "t=1,v1=zz"), 401, "bad_signature");
    assert.equal(await version("push_p"), 10, "nothing was written");
    assert.ok(KEY.length >= 16);
  });

  test("an older version is refused with 409", async () => {
    const body = JSON.stringify(plan({ placement: "push_p", version: 9 }));
    await expectError(await put("push_p", body), 409, "stale_version");
    assert.equal(JSON.parse(await worker.kv.get("plan:push_p")).version, 10);
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
});
