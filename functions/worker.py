"""BatchWorkerFunction: batch jobs from SQS and JSONL files dropped under inbox/."""

import os

from fnstack.config import load_config
from fnstack.lambda_runtime import batch_worker, load_secrets

load_secrets()  # the API keys of upstreams, from Secrets Manager, at cold start
handler = batch_worker(load_config(os.environ["FNSTACK_CONFIG"]))
