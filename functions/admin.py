"""AdminFunction: health, version, inspect, providers, API keys; the 404 for unknown routes."""

import os

from fnstack.app import create_app
from fnstack.config import load_config
from fnstack.lambda_runtime import lambda_handler, load_secrets
from fnstack.spec import Api

load_secrets()  # the API keys of upstreams, from Secrets Manager, at cold start
app = create_app(
    load_config(os.environ["FNSTACK_CONFIG"]), apis=[Api.providers, Api.inspect, Api.keys],
    lifespan=False,
)
handler = lambda_handler(app)
