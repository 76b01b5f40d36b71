// The worker's entry module: what workerd calls for every request. It hands the request
// straight to the Wasm's `fetch` export and owns one thing besides: recovery after a
// Wasm trap. scripts/build-worker.sh bundles it with wasm-bindgen's output into
// worker/build/index.js.
//
// Why not workers-rs' generated entry: that one constructs a `WorkerEntrypoint` per
// request behind a `Proxy` and wraps `fetch` in another, which cost ≈ 10–15 % of the
// worker's CPU per request (docs/performance.md, "Edge worker"). Here a request costs
// one flag check, the call, and one `instanceof`.
//
// Recovery. A Rust panic aborts (`panic = "abort"`), which is a trap: the instance is
// left mid-call, its memory in whatever state, and must not run again. The workers-rs
// panic hook marks `criticalError` on its init state just before the trap; a trap
// without a panic (out of memory, stack overflow) surfaces as a `WebAssembly.RuntimeError`
// thrown from the call, or as an uncaught error when it happens in a microtask. Either
// way the instance is marked poisoned, and:
// - the request that trapped is answered `500` in the one JSON error format;
// - requests of that instance still waiting on a Promise are answered the same way
//   (a future that trapped never settles its Promise, so each races a trap signal);
// - the next request first replaces the instance (`__wbg_reset_state`: a fresh
//   `WebAssembly.Instance` of the same module, its start function run again); closures
//   of the old instance refuse to run from then on, so its timers and fetches cannot
//   reach the new one.
// What the old instance held in memory is gone with it: its plan cache (reloaded from
// KV) and the events in its outbox that had not been sent.
import * as wasm from "./build/bindgen/index.js";

const INTERNAL_ERROR = JSON.stringify({
  error: { code: "internal", message: "the worker failed on this request and was restarted" },
});
const ERROR_HEADERS = { "content-type": "application/json", "cache-control": "no-store" };

/** Set from the moment a trap is noticed until the next request replaces the instance. */
let poisoned = false;
/**
 * How to give up on each request of the current instance that waits on a Promise. One
 * per request: workerd binds a Promise to the request that made it, so one shared
 * signal made by an earlier request could not wake a later one.
 */
const waiting = new Set();

class Trapped extends Error {}

function poison(cause) {
  if (!poisoned) console.error("Wasm instance trapped; the next request gets a fresh one:", cause);
  poisoned = true;
  for (const giveUp of waiting) giveUp(new Trapped("trap"));
  waiting.clear();
}

function replaceInstance() {
  wasm.__wbg_reset_state();
  poisoned = false;
  watchPanics();
}

// The workers-rs panic hook sets `criticalError` on this object (one per isolate, shared
// by every instance); the setter turns that into a poison mark at the moment of the panic.
function watchPanics() {
  const init = wasm.__worker_init_state();
  Object.defineProperty(init, "criticalError", {
    configurable: true,
    get: () => poisoned,
    set: (critical) => {
      if (critical) poison("Rust panic");
    },
  });
}
watchPanics();

const isTrap = (e) => e instanceof WebAssembly.RuntimeError;
addEventListener("error", (e) => isTrap(e.error) && poison(e.error));
addEventListener("unhandledrejection", (e) => isTrap(e.reason) && poison(e.reason));

const internalError = () => new Response(INTERNAL_ERROR, { status: 500, headers: ERROR_HEADERS });

/** A waiting request's end when its instance trapped or its Promise was rejected. */
function failed(cause) {
  if (isTrap(cause)) poison(cause);
  else if (!(cause instanceof Trapped)) console.error("fetch failed:", cause);
  return internalError();
}

/** The answer a Promise will bring, or a 500 if the instance traps first. */
function guarded(answer) {
  let giveUp;
  const trapped = new Promise((_, reject) => {
    giveUp = reject;
  });
  waiting.add(giveUp);
  return Promise.race([answer, trapped]).then(
    (response) => {
      waiting.delete(giveUp);
      return response;
    },
    (cause) => {
      waiting.delete(giveUp);
      return failed(cause);
    },
  );
}

export default {
  fetch(request, env, ctx) {
    if (poisoned) replaceInstance();
    let answer;
    try {
      answer = wasm.fetch(request, env, ctx);
    } catch (e) {
      // Thrown out of the call: the instance stopped mid-way, whatever the cause.
      poison(e);
      return internalError();
    }
    if (answer instanceof Response) return answer;
    return guarded(answer);
  },
};
