// The bench worker (bench/workerd.capnp's allotWorker) served the way the end-to-end
// stack and the demo serve it (tests/edge.mjs): through Miniflare, loaded with the same
// options (worker/miniflare-options.mjs), with Miniflare's KV (seeded with
// bench/plan.json under plan:bench) and its entry worker in front. Sampled events are
// acknowledged by an outbound handler, as bench/sink.js does. Prints "listening <url>"
// once ready (scripts/bench-worker.sh finds its workerd among its descendants); runs
// until SIGTERM.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { Miniflare } from "miniflare";
import { workerOptions } from "../worker/miniflare-options.mjs";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

const mf = new Miniflare({
  ...workerOptions(),
  bindings: {
    PLAN_TTL_SECS: "10",
    ORIGIN_URL: "http://origin.invalid",
    INGEST_KEY: "bench-ingest-key-0123456789",
    EDGE_KEY: "bench-edge-key-0123456789abcdef",
  },
  outboundService: async (request) => {
    await request.arrayBuffer();
    return new Response(null, { status: 204 });
  },
  host: "127.0.0.1",
  port: 0,
});

const url = await mf.ready;
const kv = await mf.getKVNamespace("PLANS");
await kv.put("plan:bench", readFileSync(`${ROOT}bench/plan.json`, "utf8"));
console.log(`listening ${url.origin}`);
process.on("SIGTERM", async () => {
  await mf.dispose();
  process.exit(0);
});
