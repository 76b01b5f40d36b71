// The edge's OpenAPI document (worker/openapi.json) against the worker: every documented
// operation answers only statuses it documents, with the documented bodies, and the
// worker answers nothing it does not document.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, test } from "node:test";
import { plan, startWorker } from "./harness.mjs";

const doc = JSON.parse(readFileSync(new URL("../openapi.json", import.meta.url)));
let worker;

before(async () => {
  worker = await startWorker({ ORIGIN_URL: "", CORS_ORIGINS: "https://app.example" });
  await worker.putPlan(plan());
});
after(() => worker?.close());

// [method, path, the document's path, init]: valid and invalid requests for each operation.
const CASES = [
  ["GET", "/v1/ad?placement=home_feed&platform=ios", "/v1/ad"],
  ["GET", "/v1/ad?placement=home_feed&request_id=app-42", "/v1/ad"],
  ["GET", "/v1/ad", "/v1/ad"],
  ["GET", "/v1/ad?placement=no_such", "/v1/ad"],
  ["GET", "/v1/ad?placement=bad%20id", "/v1/ad"],
  ["GET", "/v1/ad?placement=home_feed&request_id=%00", "/v1/ad"],
  ["OPTIONS", "/v1/ad", "/v1/ad", { headers: { Origin: "https://app.example", "Access-Control-Request-Method": "GET" } }],
  ["OPTIONS", "/v1/ad", "/v1/ad", { headers: { Origin: "https://evil.example", "Access-Control-Request-Method": "GET" } }],
  ["POST", "/v1/impression", "/v1/impression", { body: "{not json", headers: { "Content-Type": "application/json" } }],
  ["POST", "/v1/impression", "/v1/impression", { body: JSON.stringify({ request_id: "r", placement: "home_feed", ad_id: "A", impression_token: "x" }) }],
  ["OPTIONS", "/v1/impression", "/v1/impression", { headers: { Origin: "https://app.example", "Access-Control-Request-Method": "POST" } }],
  ["PUT", "/internal/plans/home_feed", "/internal/plans/{placement}", { body: JSON.stringify(plan()) }],
  ["PUT", "/internal/plans/home_feed", "/internal/plans/{placement}", { body: "{}", headers: { "X-Allot-Signature": "t=1,v1=00" } }],
  ["GET", "/healthz", "/healthz"],
];

function operation(docPath, method) {
  const op = doc.paths[docPath]?.[method.toLowerCase()];
  assert.ok(op, `${method} ${docPath} is not in the document`);
  return op;
}

function checkBody(schema, body, where) {
  const ref = schema?.$ref?.split("/").pop();
  const s = ref ? doc.components.schemas[ref] : schema;
  for (const key of s?.required ?? []) assert.ok(key in body, `${where}: no "${key}" in ${JSON.stringify(body)}`);
  if (s?.additionalProperties === false) {
    for (const key of Object.keys(body)) assert.ok(key in s.properties, `${where}: "${key}" is not in the schema`);
  }
  if (ref === "ErrorBody") {
    assert.equal(typeof body.error.code, "string", where);
    assert.equal(typeof body.error.message, "string", where);
  }
}

test("every documented operation answers as documented", async () => {
  const seen = new Set();
  for (const [method, path, docPath, init = {}] of CASES) {
    const where = `${method} ${path}`;
    const op = operation(docPath, method);
    seen.add(`${method} ${docPath}`);
    const res = await worker.get(path, { method, ...init });
    const documented = op.responses[String(res.status)];
    assert.ok(documented, `${where} answered ${res.status}, which the document does not list`);
    const schema = documented.content?.["application/json"]?.schema;
    const text = await res.text();
    if (schema) checkBody(schema, JSON.parse(text), `${where} (${res.status})`);
    else assert.ok(res.status === 204 || text === "" || res.status < 300, `${where}: an undocumented body`);
  }
  // Every operation of the document was exercised.
  for (const [p, item] of Object.entries(doc.paths)) {
    for (const m of Object.keys(item)) assert.ok(seen.has(`${m.toUpperCase()} ${p}`), `${m} ${p} has no case here`);
  }
});

test("what the document does not list, the worker does not serve", async () => {
  for (const [method, path] of [["GET", "/v1/ads"], ["GET", "/internal/plans"], ["GET", "/"], ["POST", "/v1/events"], ["GET", "/internal/trap"]]) {
    const res = await worker.get(path, { method });
    assert.equal(res.status, 404, `${method} ${path}`);
    assert.equal((await res.json()).error.code, "not_found");
  }
  for (const [method, path] of [["DELETE", "/v1/ad"], ["GET", "/v1/impression"], ["POST", "/healthz"], ["GET", "/internal/plans/home_feed"]]) {
    const res = await worker.get(path, { method });
    assert.equal(res.status, 405, `${method} ${path}`);
    const docPath = path.startsWith("/internal/plans/") ? "/internal/plans/{placement}" : path;
    assert.ok(Object.values(doc.paths[docPath]).some((op) => op.responses["405"]), `${path}: 405 undocumented`);
  }
});
