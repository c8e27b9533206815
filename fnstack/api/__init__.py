"""The contract: one module per API, OpenAI-compatible wire models plus a Protocol.

Nothing here imports a provider, boto3 or FastAPI.
"""
