#!/bin/sh
# Started by the Lambda Web Adapter (AWS_LAMBDA_EXEC_WRAPPER=/opt/bootstrap): serve
# inference.py's app with uvicorn; the adapter streams its responses to API Gateway.
#
# Lambda puts the layer's /opt/python on sys.path only inside its own Python bootstrap,
# which never runs under an exec wrapper: uvicorn, fastapi and fnstack live there, so
# the script adds it (and the task root, for inference.py) itself. Lambda's own
# PYTHONPATH (/var/runtime: boto3) stays behind them.
cd "${LAMBDA_TASK_ROOT:-$(dirname "$0")}" || exit 1
export PYTHONPATH="$PWD:/opt/python/lib/python3.12/site-packages:/opt/python${PYTHONPATH:+:$PYTHONPATH}"
exec python3 -m uvicorn inference:app --host 127.0.0.1 --port "${AWS_LWA_PORT:-8000}" \
    --no-access-log --timeout-keep-alive 900
