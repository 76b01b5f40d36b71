// GET /v1/ad over HTTP: the distribution of answers follows the plan's weights among
// the eligible campaigns, and bad input gets JSON errors.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { HEALTH_KEY, chiSquare, parallel, plan, postImpression, reportOf, startWorker, tokenPattern } from "./harness.mjs";

// χ² critical values at p = 0.001.
const CHI2_001 = { 1: 10.83, 2: 13.82, 3: 16.27 };

let worker;
before(async () => {
  worker = await startWorker({ ORIGIN_URL: "" });
  await worker.putPlan(plan());
});
after(() => worker?.close());

async function tally(n, query) {
  const counts = new Map();
  const ids = new Set();
  await parallel(n, 16, async () => {
    const res = await worker.get(`/v1/ad?${query}`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get("content-type"), /application\/json/);
    const body = await res.json();
    const keys = ["ad", "placement", "plan_version", "request_id"];
    if (body.ad !== null) keys.push("impression_token");
    assert.deepEqual(Object.keys(body).sort(), keys.sort());
    if (body.ad !== null) assert.match(body.impression_token, tokenPattern(new URLSearchParams(query).get("platform")));
    assert.equal(body.placement, "home_feed");
    assert.equal(body.plan_version, 1);
    assert.match(body.request_id, /^[0-9a-f]{32}$/);
    ids.add(body.request_id);
    const key = body.ad === null ? "none" : body.ad.id;
    if (body.ad !== null) assert.deepEqual(body.ad.creative, { img: `${body.ad.id.toLowerCase()}.png` });
    counts.set(key, (counts.get(key) ?? 0) + 1);
  });
  assert.equal(ids.size, n, "every generated request id is fresh");
  return counts;
}

describe("allocation", () => {
  test("20,000 answers match the weights when every campaign is eligible", async () => {
    const counts = await tally(20_000, "placement=home_feed&platform=iOS&country=de");
    const order = ["none", "A", "B", "C"];
    const weights = [0.2, 0.4, 0.25, 0.15];
    const observed = order.map((k) => counts.get(k) ?? 0);
    const chi2 = chiSquare(observed, weights);
    assert.ok(chi2 < CHI2_001[3], `χ² = ${chi2.toFixed(2)} for ${JSON.stringify(Object.fromEntries(counts))}`);
  });

  test("ineligible campaigns are never chosen and the rest keep their ratios", async () => {
    // web + JP: B wants ios/android, C wants DE/FR; only A and "no ad" remain.
    const counts = await tally(4_000, "placement=home_feed&platform=web&country=JP");
    assert.deepEqual([...counts.keys()].sort(), ["A", "none"]);
    const chi2 = chiSquare([counts.get("none"), counts.get("A")], [0.2 / 0.6, 0.4 / 0.6]);
    assert.ok(chi2 < CHI2_001[1], `χ² = ${chi2.toFixed(2)}`);
    // android + FR without A's share: B and C both eligible.
    const more = await tally(2_000, "placement=home_feed&platform=android&country=FR");
    assert.deepEqual([...more.keys()].sort(), ["A", "B", "C", "none"]);
  });

  test("without a country in the query, the edge's geolocation decides eligibility", async () => {
    // The harness's edge says FR, where C (DE, FR) is eligible; a query country wins.
    const fromEdge = await tally(1_500, "placement=home_feed&platform=web");
    assert.deepEqual([...fromEdge.keys()].sort(), ["A", "C", "none"]);
    const fromQuery = await tally(500, "placement=home_feed&platform=web&country=JP");
    assert.deepEqual([...fromQuery.keys()].sort(), ["A", "none"]);
  });

  test("a request id in the query is echoed", async () => {
    const res = await worker.get("/v1/ad?placement=home_feed&request_id=app-42:x.1");
    assert.equal(res.status, 200);
    assert.equal((await res.json()).request_id, "app-42:x.1");
  });

  test("percent-encoded parameters are decoded", async () => {
    const res = await worker.get("/v1/ad?placement=home%5Ffeed&platform=ios&cachebust=1");
    assert.equal(res.status, 200);
    assert.equal((await res.json()).placement, "home_feed");
  });
});

describe("bad input", () => {
  const cases = [
    ["/v1/ad", 400, "missing_placement"],
    ["/v1/ad?placement=", 400, "bad_placement"],
    ["/v1/ad?placement=home%20feed", 400, "bad_placement"],
    [`/v1/ad?placement=${"p".repeat(65)}`, 400, "bad_placement"],
    ["/v1/ad?placement=home_feed&country=DEU", 400, "bad_attributes"],
    ["/v1/ad?placement=home_feed&country=1A", 400, "bad_attributes"],
    ["/v1/ad?placement=home_feed&platform=i%20os", 400, "bad_attributes"],
    [`/v1/ad?placement=home_feed&platform=${"x".repeat(33)}`, 400, "bad_attributes"],
    ["/v1/ad?placement=home_feed&request_id=a/b", 400, "bad_request_id"],
    ["/v1/ad?placement=home_feed&placement=other", 400, "bad_query"],
    ["/v1/ad?placement=%E0%A4", 400, "bad_query"],
    ["/v1/ad?placement=%zz", 400, "bad_query"],
    ["/v1/ad?placement=nowhere", 404, "unknown_placement"],
    ["/v2/ad?placement=home_feed", 404, "not_found"],
    ["/internal/plans/a/b", 404, "not_found"],
  ];
  for (const [path, status, code] of cases) {
    test(`${path.slice(0, 60)} → ${status} ${code}`, async () => {
      const res = await worker.get(path);
      assert.equal(res.status, status);
      assert.match(res.headers.get("content-type"), /application\/json/);
      const body = await res.json();
      assert.equal(body.error.code, code);
      assert.equal(typeof body.error.message, "string");
      assert.ok(body.error.message.length > 0);
    });
  }

  test("wrong methods get 405 with Allow", async () => {
    for (const [path, method, allow] of [
      ["/v1/ad?placement=home_feed", "POST", "GET"],
      ["/v1/impression", "GET", "POST"],
      ["/internal/plans/home_feed", "GET", "PUT"],
      ["/healthz", "DELETE", "GET"],
    ]) {
      const res = await worker.get(path, { method });
      assert.equal(res.status, 405, `${method} ${path}`);
      assert.equal(res.headers.get("allow"), allow);
      assert.equal((await res.json()).error.code, "method_not_allowed");
    }
  });

  test("impression bodies are validated", async () => {
    const answer = await (await worker.get("/v1/ad?placement=home_feed&platform=ios&country=DE&request_id=r1")).json();
    const good = reportOf(answer.ad ? answer : { ...answer, ad: { id: "A" }, impression_token: "" });
    for (const [body, status, code] of [
      ["not json", 400, "bad_impression"],
      [JSON.stringify({ ...good, extra: 1 }), 400, "bad_impression"],
      [JSON.stringify({ ...good, ad_id: "a b" }), 400, "bad_impression"],
      [JSON.stringify({ request_id: "r1", placement: "home_feed", ad_id: "A" }), 400, "bad_impression"],
      [JSON.stringify({ ...good, impression_token: "short" }), 400, "bad_token"],
      [JSON.stringify({ ...good, creative: "x".repeat(5000) }), 413, "body_too_large"],
    ]) {
      const res = await postImpression(worker, body);
      assert.equal(res.status, status, body.slice(0, 80));
      assert.equal((await res.json()).error.code, code);
    }
  });

  test("healthz answers; its event counters only to the health key", async () => {
    const res = await worker.get("/healthz");
    assert.equal(res.status, 200);
    const body = await res.json();
    assert.equal(body.status, "ok");
    assert.ok(body.plans_cached >= 1);
    assert.equal(typeof body.events.queued, "number");
    // An app reading the counters around its own request would learn whether it was
    // sampled: without the key, or with another, there are none.
    for (const authorization of ["", "Bearer wrong-key-0123456789abcdef", `Bearer ${HEALTH_KEY}x`, HEALTH_KEY]) {
      const anyone = await (await worker.get("/healthz", { headers: { authorization } })).json();
      assert.deepEqual(Object.keys(anyone).sort(), ["plans_cached", "status"], authorization);
    }
  });
});
