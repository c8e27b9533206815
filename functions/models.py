"""ModelsFunction: the models API (the routing table)."""

import os

from fnstack.app import create_app
from fnstack.config import load_config
from fnstack.lambda_runtime import lambda_handler, load_secrets
from fnstack.spec import Api

load_secrets()  # the API keys of upstreams, from Secrets Manager, at cold start
app = create_app(load_config(os.environ["FNSTACK_CONFIG"]), apis=[Api.models], lifespan=False)
handler = lambda_handler(app)
