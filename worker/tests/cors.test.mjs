// Browser apps: CORS on the public routes for configured origins only, preflights
// answered, internal routes never cross-origin.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { plan, startWorker } from "./harness.mjs";

const APP = "https://app.example";
let worker;
let plain;

before(async () => {
  worker = await startWorker({ ORIGIN_URL: "", CORS_ORIGINS: `${APP}, https://other.example` });
  await worker.putPlan(plan());
  plain = await startWorker({ ORIGIN_URL: "" });
  await plain.putPlan(plan());
});
after(async () => {
  await worker?.close();
  await plain?.close();
});

const preflight = (target, path, origin, method) =>
  target.get(path, { method: "OPTIONS", headers: { origin, "access-control-request-method": method } });

describe("CORS", () => {
  test("an allowed origin may read answers and errors of the public routes", async () => {
    const ok = await worker.get("/v1/ad?placement=home_feed", { headers: { origin: APP } });
    assert.equal(ok.status, 200);
    assert.equal(ok.headers.get("access-control-allow-origin"), APP);
    assert.match(ok.headers.get("vary") ?? "", /origin/i);
    const missing = await worker.get("/v1/ad?placement=nowhere", { headers: { origin: APP } });
    assert.equal(missing.status, 404);
    assert.equal(missing.headers.get("access-control-allow-origin"), APP, "the app can read the JSON error");
    assert.equal((await missing.json()).error.code, "unknown_placement");
    const bad = await worker.get("/v1/impression", { method: "POST", headers: { origin: APP }, body: "{" });
    assert.equal(bad.headers.get("access-control-allow-origin"), APP);
  });

  test("another origin, and the internal routes, get no CORS header", async () => {
    const evil = await worker.get("/v1/ad?placement=home_feed", { headers: { origin: "https://evil.example" } });
    assert.equal(evil.status, 200, "the answer itself is unchanged: CORS only tells the browser");
    assert.equal(evil.headers.get("access-control-allow-origin"), null);
    const health = await worker.get("/healthz", { headers: { origin: APP } });
    assert.equal(health.headers.get("access-control-allow-origin"), null);
    const push = await worker.get("/internal/plans/home_feed", { method: "PUT", headers: { origin: APP }, body: "{}" });
    assert.equal(push.headers.get("access-control-allow-origin"), null);
  });

  test("preflights are granted for allowed origins and the route's method only", async () => {
    const ok = await preflight(worker, "/v1/impression", APP, "POST");
    assert.equal(ok.status, 204);
    assert.equal(ok.headers.get("access-control-allow-origin"), APP);
    assert.equal(ok.headers.get("access-control-allow-methods"), "POST");
    assert.match(ok.headers.get("access-control-allow-headers"), /content-type/);
    assert.ok(Number(ok.headers.get("access-control-max-age")) > 0);

    for (const [path, origin, method] of [
      ["/v1/impression", "https://evil.example", "POST"],
      ["/v1/ad", APP, "DELETE"],
    ]) {
      const refused = await preflight(worker, path, origin, method);
      assert.equal(refused.status, 403, `${path} ${origin} ${method}`);
      assert.equal(refused.headers.get("access-control-allow-methods"), null, "nothing is granted");
      // An allowed origin may read why; another one learns nothing.
      const allowed = origin === APP ? APP : null;
      assert.equal(refused.headers.get("access-control-allow-origin"), allowed);
      assert.equal((await refused.json()).error.code, "cors_forbidden");
    }
    const notPreflight = await worker.get("/v1/ad", { method: "OPTIONS" });
    assert.equal(notPreflight.status, 405);
    assert.equal(notPreflight.headers.get("allow"), "GET");
  });

  test("without CORS_ORIGINS nothing is cross-origin", async () => {
    const res = await plain.get("/v1/ad?placement=home_feed", { headers: { origin: APP } });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("access-control-allow-origin"), null);
    const refused = await preflight(plain, "/v1/ad", APP, "GET");
    assert.equal(refused.status, 403);
  });
});
