#!/bin/sh
# One image, two hosts. SageMaker starts a container with the argument `serve` and
# expects GET /ping and POST /invocations on port 8080 (remote::sagemaker calls it).
# On Lambda the Web Adapter extension (/opt/extensions/lambda-adapter) relays each
# request to uvicorn on AWS_LWA_PORT and streams the answer back.
if [ "$1" = "serve" ]; then
  exec python -m fnstack_dev.sagemaker_server --config "$FNSTACK_CONFIG" --host 0.0.0.0 --port 8080
fi
cd "${LAMBDA_TASK_ROOT:-/var/task}" || exit 1
exec python -m uvicorn inference:app --host 127.0.0.1 --port "${AWS_LWA_PORT:-8000}" \
    --no-access-log --timeout-keep-alive 900
