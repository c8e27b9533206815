"""InferenceFunction: chat completions, completions, embeddings.

On AWS the Lambda Web Adapter runs inference.sh, which serves ``app`` with uvicorn so
responses stream; ``handler`` answers the same app buffered, through Mangum (the
gateway emulator, `fnstack invoke`, or a deployment without the adapter).
"""

import os

from fnstack.app import create_app
from fnstack.config import load_config
from fnstack.lambda_runtime import lambda_handler, load_secrets
from fnstack.spec import Api

load_secrets()  # the API keys of upstreams, from Secrets Manager, at cold start
config = load_config(os.environ["FNSTACK_CONFIG"])
# The container image runs this module too, with its own config naming its APIs
# (functions/inference_image/image.yaml: the bundled model and its model list).
app = create_app(config, apis=config.apis or [Api.inference], lifespan=False)
handler = lambda_handler(app)
