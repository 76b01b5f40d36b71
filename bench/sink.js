// Stands in for the origin's /v1/events during the benchmark: reads and acknowledges.
export default {
  async fetch(request) {
    await request.arrayBuffer();
    return new Response(null, { status: 204 });
  },
};
