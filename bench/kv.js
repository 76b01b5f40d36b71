// A KV namespace for workerd, held in memory: workerd's KV binding speaks HTTP to this
// service (GET/PUT/DELETE https://fake-host/<encoded key>). Seeded with the bench plan.
import plan from "plan.json";

const store = new Map([["plan:bench", plan]]);

export default {
  async fetch(request) {
    const key = decodeURIComponent(new URL(request.url).pathname.slice(1));
    switch (request.method) {
      case "GET": {
        const value = store.get(key);
        return value === undefined ? new Response(null, { status: 404 }) : new Response(value);
      }
      case "PUT":
        store.set(key, await request.text());
        return new Response(null, { status: 200 });
      case "DELETE":
        store.delete(key);
        return new Response(null, { status: 200 });
      default:
        return new Response(null, { status: 405 });
    }
  },
};
