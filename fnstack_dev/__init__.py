"""fnstack's development and emulation tools: never shipped in the Lambda layer.

The same distribution as ``fnstack`` (one ``pip install``), a separate package so the
provider layer (layers/Makefile) leaves it out: the template reader, the API Gateway and
Lambda emulators behind `fnstack gateway` / `fnstack invoke`, emulated AWS (moto), the
template validator, and the SageMaker container server (it runs in the inference image,
which installs the whole distribution).
"""
