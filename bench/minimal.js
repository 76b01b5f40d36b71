// The baseline: the least a worker can do to answer with JSON of the /v1/ad size.
const BODY = JSON.stringify({
  request_id: "0123456789abcdef0123456789abcdef",
  placement: "bench",
  plan_version: 1,
  ad: { id: "A", creative: { img: "https://cdn.example/a.png", title: "Campaign A" } },
});

export default {
  fetch() {
    return new Response(BODY, { headers: { "content-type": "application/json" } });
  },
};
