"""moto_server with Athena's GetQueryResults paging.

moto answers GetQueryResults with every seeded row at once and ignores MaxResults and
NextToken. Real Athena pages: at most MaxResults rows per call (the header row counts on
the first page) and a NextToken while more remain. This launcher adds exactly that to
moto's own handler, then runs the unchanged moto_server (argv: -H HOST -p PORT).
"""
import json
import sys

from moto.athena.responses import AthenaResponse
from moto.server import main

_original = AthenaResponse.get_query_results


def get_query_results(self):
    body = json.loads(_original(self))
    rows = body["ResultSet"]["Rows"]
    limit = int(self._get_param("MaxResults") or 1000)
    start = int(self._get_param("NextToken") or 0)
    body["ResultSet"]["Rows"] = rows[start : start + limit]
    if start + limit < len(rows):
        body["NextToken"] = str(start + limit)
    return json.dumps(body)


AthenaResponse.get_query_results = get_query_results
sys.exit(main(sys.argv[1:]))
