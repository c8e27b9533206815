"""AdminFunction: health, version, inspect, providers; the 404 for unknown routes."""

import os

from fnstack.app import create_app
from fnstack.config import load_config
from fnstack.lambda_runtime import lambda_handler
from fnstack.spec import Api

app = create_app(
    load_config(os.environ["FNSTACK_CONFIG"]), apis=[Api.providers, Api.inspect], lifespan=False
)
handler = lambda_handler(app)
