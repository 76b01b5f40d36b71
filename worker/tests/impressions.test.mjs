// What a hostile app can send to the edge: impressions without a valid token (forged,
// altered, for another ad or request, expired, replayed) are refused with JSON errors
// and send nothing; request ids chosen to game the sampling hash no longer do; a body
// without a length is read only up to the limit.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import {
  EDGE_KEY,
  chunkedBody,
  eventually,
  issueToken,
  parallel,
  plan,
  postImpression,
  reportOf,
  startReceiver,
  startWorker,
  tokenPattern,
  tokenPlatform,
  unkeyedSamplePoint,
  withPlatform,
} from "./harness.mjs";

const RATE = 0.01;
/** `MAX_BODY` of `worker/src/impression.rs`. */
const LIMIT = 4 * 1024;
let worker;
let origin;

before(async () => {
  origin = await startReceiver();
  worker = await startWorker({ ORIGIN_URL: origin.url, EVENT_BATCH_MAX: "50" });
  // Every request gets A, sampled at 1 % (the hostile-traffic tests) — and a fully
  // sampled placement for the token tests, so every accepted impression is an event.
  const a = { ...plan().campaigns[0], weight: 1 };
  await worker.putPlan(plan({ placement: "low", sample_rate: RATE, no_ad_weight: 0, campaigns: [a], version: 3 }));
  await worker.putPlan(plan({ placement: "all", sample_rate: 1, no_ad_weight: 0, campaigns: [a], version: 9 }));
});
after(async () => {
  await worker?.close();
  await origin?.close();
});

async function ad(placement, requestId, query = "") {
  const res = await worker.get(`/v1/ad?placement=${placement}&request_id=${requestId}${query}`);
  assert.equal(res.status, 200);
  return res.json();
}

async function refused(body, status, code) {
  const res = await postImpression(worker, body);
  assert.equal(res.status, status, JSON.stringify(body).slice(0, 120));
  assert.match(res.headers.get("content-type"), /application\/json/);
  assert.equal((await res.json()).error.code, code);
}

const impressionsOf = (id) => origin.events.filter((e) => e.kind === "impression" && e.request_id === id);

describe("impression tokens", () => {
  test("a valid token gives one impression event with the allocation's version and rate; a replay is refused", async () => {
    const answer = await ad("all", "tok-valid");
    const res = await postImpression(worker, reportOf(answer));
    assert.equal(res.status, 204);
    await eventually(() => impressionsOf("tok-valid").length === 1, 10_000, "the impression event");
    const [e] = impressionsOf("tok-valid");
    assert.equal(e.placement, "all");
    assert.equal(e.ad_id, "A");
    assert.equal(e.plan_version, 9);
    assert.equal(e.sample_rate, 1);
    // The same report again (a replay, a retry): refused, nothing more is sent.
    await refused(reportOf(answer), 409, "duplicate_impression");
    await new Promise((r) => setTimeout(r, 400));
    assert.equal(impressionsOf("tok-valid").length, 1);
  });

  test("forged, altered, misdirected and expired tokens are refused and send nothing", async () => {
    const answer = await ad("all", "tok-hostile");
    const good = reportOf(answer);
    const now = Date.now();
    const token = good.impression_token;
    const flip = (i) => token.slice(0, i) + (token[i] === "A" ? "B" : "A") + token.slice(i + 1);
    const cases = [
      // Made with another secret: an app that guessed the format.
      [{ ...good, impression_token: issueToken({ requestId: "tok-hostile", placement: "all", ad: "A", version: 9, rate: 1, issuedAtMs: now, secret: "not-the-edge-key-0123456789" }) }, 403, "invalid_token"],
      // Every part altered: key id, issue time, version, rate, the sampling decision, MAC.
      ...[2, 8, 20, 30, 39, 50].map((i) => [{ ...good, impression_token: flip(i) }, 403, "invalid_token"]),
      // A real token, for another ad or request or placement.
      [{ ...good, ad_id: "B" }, 403, "invalid_token"],
      [{ ...good, request_id: "someone-else" }, 403, "invalid_token"],
      [{ ...good, placement: "low" }, 403, "invalid_token"],
      // A real edge's token, issued six minutes ago (or ten minutes ahead).
      [{ ...good, impression_token: issueToken({ requestId: "tok-hostile", placement: "all", ad: "A", version: 9, rate: 1, issuedAtMs: now - 6 * 60_000 }) }, 403, "expired_token"],
      [{ ...good, impression_token: issueToken({ requestId: "tok-hostile", placement: "all", ad: "A", version: 9, rate: 1, issuedAtMs: now + 10 * 60_000 }) }, 403, "expired_token"],
      // Garbage of the right length, and no token at all.
      [{ ...good, impression_token: "=".repeat(63) }, 400, "bad_token"],
      [{ request_id: "tok-hostile", placement: "all", ad_id: "A" }, 400, "bad_impression"],
    ];
    for (const [body, status, code] of cases) await refused(body, status, code);
    // An edge key of the same secret makes a token the edge accepts: the check above is
    // on the MAC, not on the format.
    const fresh = issueToken({ requestId: "tok-made", placement: "all", ad: "A", version: 9, rate: 1, issuedAtMs: now, secret: EDGE_KEY });
    const ok = await postImpression(worker, { request_id: "tok-made", placement: "all", ad_id: "A", impression_token: fresh });
    assert.equal(ok.status, 204);
    await eventually(() => impressionsOf("tok-made").length === 1, 10_000, "the impression of an edge-made token");
    await new Promise((r) => setTimeout(r, 400));
    assert.equal(impressionsOf("tok-hostile").length, 0, "no refused report became an event");
  });
});

describe("the platform of an impression", () => {
  test("an impression counts in the platform its ad was requested for, from the token alone", async () => {
    const answer = await ad("all", "plat-ios", "&platform=iOS");
    // The token carries the platform as the allocation event does: lower case.
    assert.match(answer.impression_token, tokenPattern("ios"));
    assert.equal(tokenPlatform(answer.impression_token), "ios");
    const res = await postImpression(worker, reportOf(answer));
    assert.equal(res.status, 204);
    await eventually(() => impressionsOf("plat-ios").length === 1, 10_000, "the impression event");
    assert.equal(impressionsOf("plat-ios")[0].platform, "ios");
    const allocation = origin.events.find((e) => e.kind === "allocation" && e.request_id === "plat-ios");
    assert.equal(allocation.platform, "ios");
    // A request that named no platform: an impression without one.
    const plain = await ad("all", "plat-none");
    assert.match(plain.impression_token, tokenPattern(null));
    assert.equal((await postImpression(worker, reportOf(plain))).status, 204);
    await eventually(() => impressionsOf("plat-none").length === 1, 10_000, "the plain impression");
    assert.equal(impressionsOf("plat-none")[0].platform ?? null, null);
    // An ad served by an edge of the previous format (no platform in its token) still counts.
    const v3 = issueToken({ requestId: "plat-v3", placement: "all", ad: "A", version: 9, rate: 1, issuedAtMs: Date.now(), format: 3 });
    assert.equal(v3.length, 62);
    const old = await postImpression(worker, { request_id: "plat-v3", placement: "all", ad_id: "A", impression_token: v3 });
    assert.equal(old.status, 204);
    await eventually(() => impressionsOf("plat-v3").length === 1, 10_000, "the format-3 impression");
    assert.equal(impressionsOf("plat-v3")[0].platform ?? null, null);
  });

  test("a token whose platform was changed is refused and sends nothing", async () => {
    const answer = await ad("all", "plat-moved", "&platform=iOS");
    const good = reportOf(answer);
    const cases = [
      // Another platform, of the same length or not, or none: the MAC covers it.
      [withPlatform(good.impression_token, "web"), 403, "invalid_token"],
      [withPlatform(good.impression_token, "android"), 403, "invalid_token"],
      [withPlatform(good.impression_token, null), 403, "invalid_token"],
      // Not as an edge writes it (upper case): not a token.
      [withPlatform(good.impression_token, "IOS"), 400, "bad_token"],
    ];
    for (const [token, status, code] of cases) {
      assert.notEqual(token, good.impression_token);
      await refused({ ...good, impression_token: token }, status, code);
    }
    // A token made by a forger's key for the platform it wants is refused too.
    const forged = issueToken({ requestId: "plat-moved", placement: "all", ad: "A", version: 9, rate: 1, issuedAtMs: Date.now(), platform: "web", secret: "not-the-edge-key-0123456789" });
    await refused({ ...good, impression_token: forged }, 403, "invalid_token");
    await new Promise((r) => setTimeout(r, 400));
    assert.equal(impressionsOf("plat-moved").length, 0, "no altered report became an event");
    // The unaltered token still counts, once, in its own platform.
    assert.equal((await postImpression(worker, good)).status, 204);
    await eventually(() => impressionsOf("plat-moved").length === 1, 10_000, "the genuine impression");
    assert.equal(impressionsOf("plat-moved")[0].platform, "ios");
  });
});

describe("apps that report no impressions", () => {
  test("impressions=none gets no token and a sampled allocation marked unreported; a token made for it anyway is refused", async () => {
    const res = await worker.get("/v1/ad?placement=all&request_id=quiet-1&impressions=none");
    assert.equal(res.status, 200);
    const answer = await res.json();
    assert.equal(answer.ad.id, "A");
    assert.equal(answer.impression_token, undefined, "no token for an app that reports none");
    await eventually(
      () => origin.events.some((e) => e.request_id === "quiet-1" && e.kind === "allocation"),
      10_000,
      "the quiet app's allocation",
    );
    const quiet = origin.events.find((e) => e.request_id === "quiet-1");
    assert.equal(quiet.unreported, true);
    // A reporting app (explicitly or by default) is not marked: the field is absent.
    for (const [id, q] of [["loud-1", "&impressions=reported"], ["loud-2", ""]]) {
      const r = await worker.get(`/v1/ad?placement=all&request_id=${id}${q}`);
      assert.ok((await r.json()).impression_token, id);
      await eventually(() => origin.events.some((e) => e.request_id === id), 10_000, id);
      assert.equal(origin.events.find((e) => e.request_id === id).unreported, undefined, id);
    }
    // Hostile: a report without a token (what a quiet app could send) counts nothing.
    await refused({ request_id: "quiet-1", placement: "all", ad_id: "A" }, 400, "bad_impression");
    await refused({ request_id: "quiet-1", placement: "all", ad_id: "A", impression_token: "" }, 400, "bad_token");
    for (const bad of ["NONE", "0", "yes", ""]) {
      const r = await worker.get(`/v1/ad?placement=all&request_id=quiet-2&impressions=${bad}`);
      assert.equal(r.status, 400, bad);
      assert.equal((await r.json()).error.code, "bad_impressions", bad);
    }
    const twice = await worker.get("/v1/ad?placement=all&impressions=none&impressions=reported");
    assert.equal(twice.status, 400);
    assert.equal((await twice.json()).error.code, "bad_query");
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(impressionsOf("quiet-1").length, 0);
    assert.ok(!origin.events.some((e) => e.request_id === "quiet-2"), "a refused request samples nothing");
  });
});

describe("sampling clients cannot steer", () => {
  test("ids chosen offline to be always sampled under the old hash are sampled at about the rate", async () => {
    // What a hostile app would have done: search ids the unkeyed hash puts below 1 %.
    const chosen = [];
    for (let i = 0; chosen.length < 2_000; i++) {
      const id = `evil-${i}`;
      if (unkeyedSamplePoint(id) < RATE / 10) chosen.push(id);
    }
    const before = origin.events.length;
    await parallel(chosen.length, 16, async (i) => {
      const res = await worker.get(`/v1/ad?placement=low&platform=madeup&request_id=${chosen[i]}`);
      assert.equal(res.status, 200);
    });
    await eventually(
      async () => (await (await worker.get("/healthz")).json()).events.waiting === 0,
      10_000,
      "sampled events sent",
    );
    await new Promise((r) => setTimeout(r, 400));
    const got = origin.events.slice(before).filter((e) => e.placement === "low");
    // Binomial(2000, 0.01): 20 ± 4.4; 5σ above, and some (none: e⁻²⁰), not all 2,000.
    assert.ok(got.length > 0 && got.length <= 43, `${got.length} events from ${chosen.length} chosen ids`);
    assert.ok(got.every((e) => chosen.includes(e.request_id)));
  });
});

describe("bodies without a length", () => {
  /** POSTs a chunked body (no Content-Length); `signal` bounds a wait for the answer. */
  const post = (body, signal = undefined) =>
    worker.get("/v1/impression", { method: "POST", headers: { "content-type": "application/json" }, body, duplex: "half", signal });
  const queued = async () => (await (await worker.get("/healthz")).json()).events.queued;

  async function tooLarge(res) {
    assert.equal(res.status, 413);
    assert.match(res.headers.get("content-type"), /application\/json/);
    const body = await res.json();
    assert.deepEqual(Object.keys(body), ["error"]);
    assert.equal(body.error.code, "body_too_large");
    assert.equal(body.error.message, `the body may be at most ${LIMIT} bytes`);
  }

  test("a chunked report over the limit is refused once the limit is passed, and counts nothing", { timeout: 60_000 }, async () => {
    const answer = await ad("all", "chunk-over");
    const report = JSON.stringify(reportOf(answer));
    const before = await queued();
    // A genuine report followed by 100 MB of spaces, sent 1 KiB at a time and stalled
    // after 8 KiB: an edge that read the whole body before judging its size would wait
    // for the rest, and hold it all, before answering.
    const stalled = chunkedBody(report, 100 * 1024 * 1024, { chunk: 1024, stallAfter: 2 * LIMIT });
    await tooLarge(await post(stalled.body, AbortSignal.timeout(15_000)));
    stalled.end();
    // The same 100 MB as fast as the runtime takes it: refused as well, and the runtime
    // stops taking it long before the end. Whether the 413 is read or the runtime
    // closes the connection under the sender first (as servers do after an early
    // answer) is the client's race; nothing is counted either way.
    const flood = chunkedBody(report, 100 * 1024 * 1024);
    const answered = await post(flood.body).catch((e) => e);
    if (answered instanceof Response) await tooLarge(answered);
    else assert.match(String(answered.cause?.code ?? answered.cause ?? answered), /ECONNRESET|EPIPE|UND_ERR_SOCKET|other side closed/);
    assert.ok(flood.taken() < 16 * 1024 * 1024, `the runtime took ${flood.taken()} bytes of 100 MB`);
    // Over the limit by one byte, the whole body sent: refused too.
    await tooLarge(await post(chunkedBody(report, LIMIT + 1, { chunk: 512 }).body));
    await new Promise((r) => setTimeout(r, 400));
    assert.equal(impressionsOf("chunk-over").length, 0, "a refused body became an event");
    assert.equal(await queued(), before, "a refused body was queued");
    // Its token was not used up: the report itself, chunked, counts once.
    assert.equal((await post(chunkedBody(report, report.length, { chunk: 64 }).body)).status, 204);
    await eventually(() => impressionsOf("chunk-over").length === 1, 10_000, "the genuine impression");
    assert.equal(await queued(), before + 1);
  });

  test("a chunked report within the limit is read whole, up to the limit exactly", async () => {
    for (const [id, size, chunk] of [["chunk-small", 0, 7], ["chunk-limit", LIMIT, 1000]]) {
      const report = JSON.stringify(reportOf(await ad("all", id)));
      const res = await post(chunkedBody(report, Math.max(size, report.length), { chunk }).body);
      assert.equal(res.status, 204, id);
      await eventually(() => impressionsOf(id).length === 1, 10_000, `the impression of ${id}`);
    }
  });
});
