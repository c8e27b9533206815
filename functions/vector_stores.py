"""VectorStoresFunction: vector stores, their files, file batches and search.

Indexing runs in the worker function (jobs on the SQS queue); this function answers
the API and embeds search queries with the layer's embedding model.
"""

import os

from fnstack.app import create_app
from fnstack.config import load_config
from fnstack.lambda_runtime import lambda_handler
from fnstack.spec import Api

app = create_app(load_config(os.environ["FNSTACK_CONFIG"]), apis=[Api.vector_io], lifespan=False)
handler = lambda_handler(app)
