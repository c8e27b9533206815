"""BatchWorkerFunction: batch jobs from SQS and JSONL files dropped under inbox/."""

import os

from fnstack.config import load_config
from fnstack.lambda_runtime import batch_worker

handler = batch_worker(load_config(os.environ["FNSTACK_CONFIG"]))
