"""Answers with the event and what the sandbox looks like from inside."""

import base64
import json
import os
import sys
import time

import echolib  # from the layer: /opt/python

STARTED = time.time()


def handler(event, context):
    path = event["path"]
    if path == "/v1/sleep":
        time.sleep(float((event.get("queryStringParameters") or {}).get("s", "0.5")))
    if path == "/v1/slow":
        time.sleep(5)  # past the function's Timeout (3 s) and the route's 500 ms
    if path == "/v1/crash":
        os._exit(3)
    if path == "/v1/size":
        return {"statusCode": 200, "body": str(len(event["body"] or ""))}
    if path == "/v1/big":
        return {"statusCode": 200, "body": "x" * (7 * 1024 * 1024)}
    if path == "/v1/bin":
        raw = base64.b64decode(event["body"]) if event["isBase64Encoded"] else b""
        return {"statusCode": 201, "isBase64Encoded": True,
                "headers": {"content-type": "application/octet-stream"},
                "multiValueHeaders": {"x-multi": ["a", "b"]},
                "body": base64.b64encode(raw[::-1]).decode()}
    if path == "/v1/health":
        return {"statusCode": 200, "headers": {"content-type": "application/json"},
                "body": json.dumps({"status": "OK"})}
    answer = {
        "event": event,
        "env": {k: v for k, v in os.environ.items() if not k.startswith("AWS_SECRET")},
        "sys_path": sys.path,
        "pid": os.getpid(),
        "started": STARTED,
        "layer": echolib.WHERE,
        "opt_data": os.path.isdir(os.environ["DATA_DIR"]),
        "function_name": context.function_name,
        "memory": context.memory_limit_in_mb,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "has_fnstack": _importable("fnstack"),
    }
    return {"statusCode": 200, "headers": {"content-type": "application/json"},
            "body": json.dumps(answer)}


def _importable(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None
