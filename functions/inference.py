"""InferenceFunction: chat completions, completions, embeddings, messages, responses.

The Responses API runs here, where streaming works: its agent loop calls inference,
file search (vector stores), conversations, prompts and web search in-process (the
stack builds them as the responses service's optional dependencies; their own routes
live in their functions). Background responses are queued to the worker.

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
app = create_app(config, apis=config.apis or [Api.inference, Api.responses], lifespan=False)
handler = lambda_handler(app)
