// Test harness for the edge worker: the built worker in real workerd (through
// Miniflare) with a real local KV namespace, and a Node HTTP server standing in for
// the origin's /v1/events that checks every signature itself with node:crypto.
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";
import { fileURLToPath } from "node:url";
import { Miniflare } from "miniflare";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
export const KEY = "test-ingest-key-0123456789abcdef";
const MAX_SKEW_SECS = 300;

/**
 * Starts the worker; `bindings` override the defaults. `cf` is what the worker sees as
 * the edge's request properties (`request.cf`: country, colo, …).
 */
export async function startWorker(bindings = {}, { cf = { country: "FR", colo: "CDG" } } = {}) {
  const mf = new Miniflare({
    modules: true,
    scriptPath: `${ROOT}/worker/build/index.js`,
    modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"] }],
    compatibilityDate: "2026-04-20",
    kvNamespaces: ["PLANS"],
    bindings: { PLAN_TTL_SECS: "1", INGEST_KEY: KEY, EVENT_BATCH_AGE_MS: "100", ...bindings },
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
    get: (path, init) => fetch(new URL(path, url), init),
    close: () => mf.dispose(),
  };
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
 * "slow" (answers after `slowMs`). Every request's signature is checked.
 */
export async function startReceiver() {
  // `sent`: every request's signature header and body, in arrival order.
  const state = { events: [], batches: 0, badSignatures: 0, requests: 0, sent: [], mode: "ok", slowMs: 3000 };
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
      const accept = () => {
        state.batches += 1;
        state.events.push(...JSON.parse(body.toString("utf8")).events);
        answer(204);
      };
      if (state.mode === "slow") setTimeout(accept, state.slowMs);
      else accept();
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  state.url = `http://127.0.0.1:${server.address().port}`;
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

/**
 * The consistent-sampling point of a request id, transcribed from the documented
 * scheme (FNV-1a 64, SplitMix64 finaliser, top 53 bits) to check the worker's
 * decisions request by request.
 */
export function samplePoint(requestId) {
  const M = (1n << 64n) - 1n;
  let h = 0xcbf29ce484222325n;
  for (const b of Buffer.from(requestId, "utf8")) {
    h ^= BigInt(b);
    h = (h * 0x100000001b3n) & M;
  }
  h ^= h >> 30n;
  h = (h * 0xbf58476d1ce4e5b9n) & M;
  h ^= h >> 27n;
  h = (h * 0x94d049bb133111ebn) & M;
  h ^= h >> 31n;
  return Number(h >> 11n) / 2 ** 53;
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
