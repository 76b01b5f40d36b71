// The baseline: the least a worker can do to answer with the bytes /v1/ad answers with.
// The bench's plan gives an ad (and its impression token: 67 characters for the bench's
// `platform=ios`) to 4 requests in 5 and none to the fifth, so the baseline alternates
// the same two bodies in the same proportion, with the same two headers.
const ID = "0123456789abcdef0123456789abcdef";
const HEAD = `{"request_id":"${ID}","placement":"bench","plan_version":1,"ad":`;
const AD = `${HEAD}{"id":"A","creative":{"img":"https://cdn.example/a.png","title":"Campaign A"}},"impression_token":"${"t".repeat(67)}"}`;
const NONE = `${HEAD}null}`;

let served = 0;

export default {
  fetch() {
    served += 1;
    const body = served % 5 === 0 ? NONE : AD;
    return new Response(body, { headers: { "content-type": "application/json", "cache-control": "no-store" } });
  },
};
