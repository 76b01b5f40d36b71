// How Miniflare loads the built edge worker (worker/build, from scripts/build-worker.sh):
// the bundle as an ES module with its Wasm as a compiled module, the compatibility date
// the worker is deployed with (wrangler.toml), and the PLANS namespace it reads plans
// from. One home, so that the end-to-end stack and the demo (tests/edge.mjs) and the
// bench (bench/miniflare.mjs) measure and test the same worker; each adds its own
// bindings, KV persistence, outbound handler and address.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const COMPATIBILITY_DATE = /^compatibility_date = "([^"]+)"$/m.exec(readFileSync(`${ROOT}wrangler.toml`, "utf8"))[1];

/**
 * The worker's part of a Miniflare configuration, a fresh object per call: spread it
 * into the caller's own (`new Miniflare({ ...workerOptions(), bindings, … })`).
 */
export function workerOptions() {
  return {
    modules: true,
    scriptPath: `${ROOT}worker/build/index.js`,
    modulesRoot: ROOT,
    modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"] }],
    compatibilityDate: COMPATIBILITY_DATE,
    kvNamespaces: ["PLANS"],
  };
}
