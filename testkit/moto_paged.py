"""moto_server with two things real Athena does and moto does not.

- Paging: moto answers GetQueryResults with every seeded row at once and ignores
  MaxResults and NextToken. Real Athena pages: at most MaxResults rows per call (the
  header row counts on the first page) and a NextToken while more remain.
- Failing: moto runs no SQL, so no query ever FAILS. Here a query that reads the table
  `missing_table` fails the way Athena reports a missing table: state FAILED, with the
  reason in StateChangeReason and AthenaError.

This launcher adds exactly that to moto's own handlers, then runs the unchanged
moto_server (argv: -H HOST -p PORT).
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


_original_execution = AthenaResponse.get_query_execution
MISSING_TABLE_REASON = (
    "TABLE_NOT_FOUND: line 1:15: Table 'awsdatacatalog.allot.missing_table' does not exist"
)


def get_query_execution(self):
    body = json.loads(_original_execution(self))
    execution = body["QueryExecution"]
    if "missing_table" in execution.get("Query", ""):
        execution["Status"]["State"] = "FAILED"
        execution["Status"]["StateChangeReason"] = MISSING_TABLE_REASON
        execution["Status"]["AthenaError"] = {
            "ErrorCategory": 2,
            "ErrorType": 1006,
            "Retryable": False,
            "ErrorMessage": MISSING_TABLE_REASON,
        }
    return json.dumps(body)


AthenaResponse.get_query_results = get_query_results
AthenaResponse.get_query_execution = get_query_execution
sys.exit(main(sys.argv[1:]))
