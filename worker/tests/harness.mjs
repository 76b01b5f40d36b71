// Test harness for the edge worker: the built worker in real workerd (through
// Miniflare) with a real local KV namespace, and a Node HTTP server standing in for
// the origin's /v1/events that checks every signature itself with node:crypto.
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";
import { Miniflare } from "miniflare";
import { workerOptions } from "../miniflare-options.mjs";

export const KEY = "test-ingest-key-0123456789abcdef";
export const PUSH_KEY = "test-push-key-0123456789abcdef";
/** The edges' secret: keyed sampling and impression tokens. */
export const EDGE_KEY = "test-edge-key-0123456789abcdef";
/** Shows `/healthz`'s event counters to the tests (`worker.get` sends it there). */
export const HEALTH_KEY = "test-health-key-0123456789abcdef";
const MAX_SKEW_SECS = 300;

/**
 * Starts the worker; `bindings` override the defaults. `cf` is what the worker sees as
 * the edge's request properties (`request.cf`: country, colo, …).
 */
export async function startWorker(bindings = {}, { cf = { country: "FR", colo: "CDG" } } = {}) {
  const mf = new Miniflare({
    ...workerOptions(),
    bindings: { PLAN_TTL_SECS: "1", INGEST_KEY: KEY, PUSH_KEYS: PUSH_KEY, EDGE_KEY, HEALTH_KEY, EVENT_BATCH_AGE_MS: "100", ...bindings },
    cf,
    host: "127.0.0.1",
    port: 0,
  });
  const url = await mf.ready;
  const kv = await mf.getKVNamespace("PLANS");
  return {
    url,
    kv,
    async putPlan(plan) {
      await kv.put(`plan:${plan.placement}`, typeof plan === "string" ? plan : JSON.stringify(plan));
    },
    get: (path, init) => fetchRetryingGets(new URL(path, url), asOperator(path, init)),
    close: () => mf.dispose(),
  };
}

/** `/healthz` as the operators read it: with the health key, unless the test sets one. */
function asOperator(path, init) {
  if (!path.startsWith("/healthz") || init?.headers?.authorization !== undefined) return init;
  return { ...init, headers: { ...init?.headers, authorization: `Bearer ${HEALTH_KEY}` } };
}

/**
 * `fetch`, with a GET retried (twice, briefly) when the connection itself fails: on a
 * loaded machine the local runtime now and then drops a kept-alive connection as the
 * client reuses it. A GET is what an app would simply send again; other methods are
 * retried only when the caller says `retryOnDrop` (a request refused before its body
 * was read: the runtime may close the connection while the client is still sending,
 * as HTTP servers do after an early 413), and an HTTP answer of any status is returned
 * as it is.
 */
async function fetchRetryingGets(url, init) {
  const retryable = (init?.method ?? "GET") === "GET" || init?.retryOnDrop === true;
  for (let attempt = 0; ; attempt++) {
    try {
      return await fetch(url, init);
    } catch (e) {
      if (!retryable || attempt >= 2) throw e;
      await new Promise((r) => setTimeout(r, 50 * (attempt + 1)));
    }
  }
}

/**
 * A chunked request body (no Content-Length): `head`, then spaces up to `total` bytes
 * (JSON allows them after a value), made only as the runtime takes them, `chunk` bytes
 * at a time. With `stallAfter`, the sender stops after that many bytes and waits, as
 * a slow or hostile client does, until `end()` closes the body there. `taken()` is how
 * many bytes the runtime pulled. Send it with `{ body, duplex: "half" }`.
 */
export function chunkedBody(head, total, { chunk = 16 * 1024, stallAfter = Infinity } = {}) {
  const start = Buffer.from(head, "utf8");
  let taken = 0;
  let end;
  const ended = new Promise((resolve) => {
    end = resolve;
  });
  const body = new ReadableStream({
    async pull(controller) {
      if (taken >= stallAfter) await ended;
      if (taken >= Math.min(total, stallAfter)) {
        controller.close();
        return;
      }
      const n = Math.min(chunk, total - taken, stallAfter - taken);
      const bytes = Buffer.alloc(n, " ");
      if (taken < start.length) start.copy(bytes, 0, taken, Math.min(start.length, taken + n));
      taken += n;
      controller.enqueue(new Uint8Array(bytes));
    },
  });
  return { body, taken: () => taken, end: () => end() };
}

/** `X-Allot-Signature` for `body` at unix time `t`, computed independently of core. */
export function sign(body, t = Math.floor(Date.now() / 1000), key = KEY) {
  const mac = createHmac("sha256", key).update(`${t}.${body}`).digest("hex");
  return `t=${t},v1=${mac}`;
}

function verify(header, body) {
  const m = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(header ?? "");
  if (!m) return false;
  const t = Number(m[1]);
  if (Math.abs(Date.now() / 1000 - t) > MAX_SKEW_SECS) return false;
  const expected = createHmac("sha256", KEY).update(`${m[1]}.`).update(body).digest();
  return timingSafeEqual(expected, Buffer.from(m[2], "hex"));
}

/**
 * The origin's ingest endpoint. `mode` decides the answer: "ok" (204), "fail" (500) or
 * "slow" (answers after `slowMs`). Every request's signature is checked, and a body
 * stored before (same signature header, same bytes) is answered without being stored
 * again, as the origin's replay memory does (`duplicates` counts them). `pause()`
 * closes the port (the edge's sends are refused) until `resume()`. With `maxBody` set,
 * a larger body is refused with 413, as the origin refuses one past its limit.
 */
export async function startReceiver() {
  // `sent`: every request's signature header and body, in arrival order.
  const state = {
    events: [],
    batches: 0,
    badSignatures: 0,
    requests: 0,
    duplicates: 0,
    // The edge's drop reports (X-Allot-Edge-Dropped) of stored bodies, summed.
    reportedDrops: 0,
    sent: [],
    mode: "ok",
    slowMs: 3000,
    maxBody: 0,
  };
  const stored = new Set();
  const server = createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      state.requests += 1;
      const body = Buffer.concat(chunks);
      state.sent.push({ signature: req.headers["x-allot-signature"], body: body.toString("utf8") });
      const answer = (status) => {
        res.writeHead(status);
        res.end();
      };
      if (req.method !== "POST" || req.url !== "/v1/events") return answer(404);
      if (!verify(req.headers["x-allot-signature"], body)) {
        state.badSignatures += 1;
        return answer(401);
      }
      if (state.mode === "fail") return answer(500);
      // The origin refuses a body past its `ingest.max_body_bytes` whole.
      if (state.maxBody && body.length > state.maxBody) return answer(413);
      const accept = () => {
        const memory = `${req.headers["x-allot-signature"]}|${body.toString("utf8")}`;
        if (stored.has(memory)) {
          state.duplicates += 1;
          return answer(202);
        }
        stored.add(memory);
        state.reportedDrops += Number(req.headers["x-allot-edge-dropped"] ?? 0);
        state.batches += 1;
        state.events.push(...JSON.parse(body.toString("utf8")).events);
        answer(204);
      };
      if (state.mode === "slow") setTimeout(accept, state.slowMs);
      else accept();
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = server.address().port;
  state.url = `http://127.0.0.1:${port}`;
  state.pause = () =>
    new Promise((resolve) => {
      server.closeAllConnections();
      server.close(resolve);
    });
  state.resume = () => new Promise((resolve) => server.listen(port, "127.0.0.1", resolve));
  state.close = () =>
    new Promise((resolve) => {
      server.closeAllConnections();
      server.close(resolve);
    });
  return state;
}

/** Runs `count` tasks with at most `width` in flight. */
export async function parallel(count, width, task) {
  const results = new Array(count);
  let next = 0;
  const lane = async () => {
    while (next < count) {
      const i = next++;
      results[i] = await task(i);
    }
  };
  await Promise.all(Array.from({ length: width }, lane));
  return results;
}

/** Waits until `check()` is truthy, polling; fails after `ms`. */
export async function eventually(check, ms = 10_000, what = "condition") {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Pearson's χ² of observed counts against expected probabilities. */
export function chiSquare(observed, probabilities) {
  const n = observed.reduce((a, b) => a + b, 0);
  return observed.reduce((sum, o, i) => {
    const e = probabilities[i] * n;
    return sum + (o - e) ** 2 / e;
  }, 0);
}

const M64 = (1n << 64n) - 1n;

/**
 * The sampling point an app could compute before sampling was keyed (FNV-1a 64,
 * SplitMix64 finaliser, top 53 bits): what a hostile client would search ids with.
 */
export function unkeyedSamplePoint(requestId) {
  let h = 0xcbf29ce484222325n;
  for (const b of Buffer.from(requestId, "utf8")) {
    h ^= BigInt(b);
    h = (h * 0x100000001b3n) & M64;
  }
  h ^= h >> 30n;
  h = (h * 0xbf58476d1ce4e5b9n) & M64;
  h ^= h >> 27n;
  h = (h * 0x94d049bb133111ebn) & M64;
  h ^= h >> 31n;
  return Number(h >> 11n) / 2 ** 53;
}

const derive = (secret, label) => createHmac("sha256", secret).update(label).digest();

/**
 * An impression token as an edge holding `secret` issues it, from the documented
 * layout: lets tests make expired tokens and forgeries. `platform` is the request's as
 * events carry it (lower case), or null; `format: 3` makes the token an edge of the
 * previous format issued (no platform).
 */
export function issueToken({ requestId, placement, ad, version, rate, issuedAtMs, sampled = true, platform = null, format = 4, secret = EDGE_KEY }) {
  const name = Buffer.from(platform ?? "", "utf8");
  const header = Buffer.alloc(format === 3 ? 30 : 31 + name.length);
  header[0] = format;
  derive(secret, "allot/key-id/v1").copy(header, 1, 0, 4);
  header.writeBigUInt64BE(BigInt(issuedAtMs), 5);
  header.writeBigUInt64BE(BigInt(version), 13);
  header.writeDoubleBE(rate, 21);
  header[29] = sampled ? 1 : 0;
  if (format !== 3) {
    header[30] = name.length;
    name.copy(header, 31);
  }
  const mac = createHmac("sha256", derive(secret, "allot/token/v1")).update("allot/impression/v1").update(header);
  for (const f of [requestId, placement, ad]) {
    const b = Buffer.from(f, "utf8");
    const len = Buffer.alloc(2);
    len.writeUInt16BE(b.length);
    mac.update(len).update(b);
  }
  const digest = mac.digest();
  // The decision is masked by a bit of the MAC no token carries.
  header[29] ^= digest[16] & 1;
  return Buffer.concat([header, digest.subarray(0, 16)]).toString("base64url");
}

/**
 * What an edge's token for a request of `platform` (or none) looks like: base64url of
 * 47 bytes and the platform's.
 */
export function tokenPattern(platform) {
  const chars = Math.ceil(((47 + (platform?.length ?? 0)) * 4) / 3);
  return new RegExp(`^[A-Za-z0-9_-]{${chars}}$`);
}

/** The platform an impression token carries, as an app can read it (null: none). */
export function tokenPlatform(token) {
  const bytes = Buffer.from(token, "base64url");
  return bytes[30] === 0 ? null : bytes.subarray(31, 31 + bytes[30]).toString("utf8");
}

/**
 * `token` with its platform replaced by `platform` (null: none), its MAC kept: what an
 * app would send to count its impressions under another platform.
 */
export function withPlatform(token, platform) {
  const bytes = Buffer.from(token, "base64url");
  const name = Buffer.from(platform ?? "", "utf8");
  const head = Buffer.from(bytes.subarray(0, 31));
  head[30] = name.length;
  return Buffer.concat([head, name, bytes.subarray(31 + bytes[30])]).toString("base64url");
}

/** The sampling byte of an impression token as an app can read it. */
export function tokenDecisionByte(token) {
  return Buffer.from(token, "base64url")[29];
}

/** POSTs an impression report. */
export function postImpression(worker, body) {
  return worker.get("/v1/impression", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}

/** The impression report of a `/v1/ad` answer. */
export function reportOf(answer) {
  return {
    request_id: answer.request_id,
    placement: answer.placement,
    ad_id: answer.ad.id,
    impression_token: answer.impression_token,
  };
}

export function plan(overrides = {}) {
  return {
    format: 1,
    placement: "home_feed",
    version: 1,
    issued_at_ms: 1764000000000,
    sample_rate: 1,
    no_ad_weight: 0.2,
    campaigns: [
      { id: "A", weight: 0.4, creative: { img: "a.png" }, eligibility: { platforms: [], countries: [] } },
      { id: "B", weight: 0.25, creative: { img: "b.png" }, eligibility: { platforms: ["ios", "android"], countries: [] } },
      { id: "C", weight: 0.15, creative: { img: "c.png" }, eligibility: { platforms: [], countries: ["DE", "FR"] } },
    ],
    ...overrides,
  };
}
