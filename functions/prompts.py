"""PromptsFunction: versioned prompt templates (/v1/prompts)."""

import os

from fnstack.app import create_app
from fnstack.config import load_config
from fnstack.lambda_runtime import lambda_handler
from fnstack.spec import Api

app = create_app(load_config(os.environ["FNSTACK_CONFIG"]), apis=[Api.prompts], lifespan=False)
handler = lambda_handler(app)
