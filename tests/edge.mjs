// Serves the built edge worker (worker/build, loaded as worker/miniflare-options.mjs
// says) in real workerd through Miniflare, with a real local KV namespace persisted
// under $ALLOT_EDGE_STATE (in memory when unset). Used by the end-to-end tests and the
// demo. Prints "listening <url>" once ready and runs until SIGTERM/SIGINT or until its
// stdin closes (so it never outlives its parent).
//
// Environment: ORIGIN_URL, INGEST_KEY, PUSH_KEYS, EDGE_KEY, HEALTH_KEY, CORS_ORIGINS, PORT (0 = any),
// PLAN_TTL_SECS (default 2), EVENT_BATCH_AGE_MS (default 200), EVENT_TIMEOUT_MS,
// EVENT_BATCH_MAX and EVENT_OUTBOX_MAX_BYTES (the worker's defaults when unset),
// ALLOT_EDGE_STATE.
import { Miniflare } from "miniflare";
import { workerOptions } from "../worker/miniflare-options.mjs";

const env = process.env;

const mf = new Miniflare({
  ...workerOptions(),
  kvPersist: env.ALLOT_EDGE_STATE || false,
  bindings: {
    ORIGIN_URL: env.ORIGIN_URL ?? "http://127.0.0.1:8080",
    INGEST_KEY: env.INGEST_KEY ?? "dev-ingest-key-not-for-production",
    PUSH_KEYS: env.PUSH_KEYS ?? "dev-push-key-not-for-production",
    CORS_ORIGINS: env.CORS_ORIGINS ?? "",
    EDGE_KEY: env.EDGE_KEY ?? "dev-edge-key-not-for-production",
    HEALTH_KEY: env.HEALTH_KEY ?? "dev-health-key-not-for-production",
    PLAN_TTL_SECS: env.PLAN_TTL_SECS ?? "2",
    EVENT_BATCH_AGE_MS: env.EVENT_BATCH_AGE_MS ?? "200",
    ...(env.EVENT_TIMEOUT_MS ? { EVENT_TIMEOUT_MS: env.EVENT_TIMEOUT_MS } : {}),
    ...(env.EVENT_BATCH_MAX ? { EVENT_BATCH_MAX: env.EVENT_BATCH_MAX } : {}),
    ...(env.EVENT_OUTBOX_MAX_BYTES ? { EVENT_OUTBOX_MAX_BYTES: env.EVENT_OUTBOX_MAX_BYTES } : {}),
  },
  host: "127.0.0.1",
  port: Number(env.PORT ?? 0),
});

const url = await mf.ready;
console.log(`listening ${url.origin}`);

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  await mf.dispose();
  process.exit(0);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
process.stdin.on("end", stop);
process.stdin.resume();
