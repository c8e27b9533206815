#!/bin/sh
# Started by the Lambda Web Adapter (AWS_LAMBDA_EXEC_WRAPPER=/opt/bootstrap): serve
# inference.py's app with uvicorn; the adapter streams its responses to API Gateway.
cd "${LAMBDA_TASK_ROOT:-$(dirname "$0")}" || exit 1
exec python3 -m uvicorn inference:app --host 127.0.0.1 --port "${AWS_LWA_PORT:-8000}" \
    --no-access-log --timeout-keep-alive 900
