"""``python -m moto.server``, with DynamoDB's per-item atomicity.

moto applies a DynamoDB request in several Python steps and holds no lock, so two
concurrent requests on one item can interleave: two ``UpdateItem ... ADD n :1`` both read
the old count and one increment is lost (seen: 20 concurrent increments stored 17).
DynamoDB itself applies every request to an item atomically, and fnstack's counters
(`KVStore.incr`, the quotas) and conditional writes rely on that. This server runs
DynamoDB requests one at a time to give the emulator the same guarantee; every other
service (SQS long polls above all) stays concurrent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto import server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication

_dynamodb = threading.Lock()
_dispatch = DomainDispatcherApplication.__call__


def _serialised(
    self: DomainDispatcherApplication, environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes]:
    # DynamoDB's JSON protocol names the operation in X-Amz-Target: DynamoDB_20120810.<Op>
    if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
        with _dynamodb:
            # The whole response is built inside the call (moto returns a list).
            return list(_dispatch(self, environ, start_response))
    response: Iterable[bytes] = _dispatch(self, environ, start_response)
    return response


if __name__ == "__main__":
    DomainDispatcherApplication.__call__ = _serialised  # type: ignore[method-assign]
    server.main()
