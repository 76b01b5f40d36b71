# Benchmark configuration: the Rust worker and a minimal JS worker side by side in one
# workerd, so they share the runtime, the machine and the load generator.
#
#   workerd serve bench/workerd.capnp --socket-addr allot=127.0.0.1:PORT --socket-addr minimal=127.0.0.1:PORT
#
# (scripts/bench-worker.sh does this, after building the worker.)
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "allot", worker = .allotWorker),
    (name = "minimal", worker = .minimalWorker),
    (name = "plans-kv", worker = .kvWorker),
    (name = "origin-sink", worker = .sinkWorker),
  ],
  sockets = [
    (name = "allot", address = "127.0.0.1:8801", http = (), service = "allot"),
    (name = "minimal", address = "127.0.0.1:8802", http = (), service = "minimal"),
  ],
);

# Every worker here runs at the date the edge is deployed with, wrangler.toml's
# compatibility_date (scripts/bench-worker.sh refuses to run when they differ).
const compatibilityDate :Text = "2026-04-20";

# The edge worker as scripts/build-worker.sh builds it (its entry module bundled with the
# wasm-bindgen glue, and the Wasm), with the bindings wrangler.toml and its secrets give
# it: with EDGE_KEY every ad carries an impression token and 1 % of requests are
# sampled, as in production.
const allotWorker :Workerd.Worker = (
  modules = [
    (name = "index.js", esModule = embed "../worker/build/index.js"),
    (name = "index_bg.wasm", wasm = embed "../worker/build/index_bg.wasm"),
  ],
  compatibilityDate = .compatibilityDate,
  bindings = [
    (name = "PLANS", kvNamespace = "plans-kv"),
    (name = "PLAN_TTL_SECS", text = "10"),
    (name = "ORIGIN_URL", text = "http://origin.invalid"),
    (name = "INGEST_KEY", text = "bench-ingest-key-0123456789"),
    (name = "EDGE_KEY", text = "bench-edge-key-0123456789abcdef"),
    (name = "HEALTH_KEY", text = "bench-health-key-0123456789abcdef"),
  ],
  # Sampled events go to the sink, which acknowledges them like the origin would.
  globalOutbound = "origin-sink",
);

# What the edge is compared with: a worker that returns a fixed JSON body.
const minimalWorker :Workerd.Worker = (
  modules = [(name = "minimal.js", esModule = embed "minimal.js")],
  compatibilityDate = .compatibilityDate,
);

# KV namespace backed by memory, seeded with bench/plan.json under plan:bench.
const kvWorker :Workerd.Worker = (
  modules = [
    (name = "kv.js", esModule = embed "kv.js"),
    (name = "plan.json", text = embed "plan.json"),
  ],
  compatibilityDate = .compatibilityDate,
);

const sinkWorker :Workerd.Worker = (
  modules = [(name = "sink.js", esModule = embed "sink.js")],
  compatibilityDate = .compatibilityDate,
);
