"""FilesFunction: the files and uploads APIs (content in S3, metadata in the table)."""

import os

from fnstack.app import create_app
from fnstack.config import load_config
from fnstack.lambda_runtime import lambda_handler
from fnstack.spec import Api

app = create_app(load_config(os.environ["FNSTACK_CONFIG"]), apis=[Api.files], lifespan=False)
handler = lambda_handler(app)
