"""BatchWorkerFunction: batch jobs from SQS and JSONL files dropped under inbox/."""

import contextlib
import os

# onnxruntime segfaults when imported after usearch (the layer's cp312 wheels; the
# inline::vector provider also imports it first): import it here, before anything.
# (Measured in the built gateway: without this, every embeddings batch and every
# ingestion job crashed the worker with SIGSEGV.)
with contextlib.suppress(ImportError):
    import onnxruntime  # noqa: F401

from fnstack.config import load_config
from fnstack.lambda_runtime import batch_worker, load_secrets

load_secrets()  # the API keys of upstreams, from Secrets Manager, at cold start
handler = batch_worker(load_config(os.environ["FNSTACK_CONFIG"]))
