#!/bin/sh
# One image, two hosts. SageMaker starts a container with the argument `serve` and
# expects GET /ping and POST /invocations on port 8080 (remote::sagemaker calls it);
# Lambda starts it with the handler name, answered by the runtime interface client.
if [ "$1" = "serve" ]; then
  exec python -m fnstack_dev.sagemaker_server --config "$FNSTACK_CONFIG" --host 0.0.0.0 --port 8080
fi
exec /lambda-entrypoint.sh "$@"
