"""SafetyFunction: moderations, shields and run-shield."""

import os

from fnstack.app import create_app
from fnstack.config import load_config
from fnstack.lambda_runtime import lambda_handler, load_secrets
from fnstack.spec import Api

load_secrets()  # an llm-judge shield may call the upstream: its API key, at cold start
app = create_app(load_config(os.environ["FNSTACK_CONFIG"]), apis=[Api.safety], lifespan=False)
handler = lambda_handler(app)
