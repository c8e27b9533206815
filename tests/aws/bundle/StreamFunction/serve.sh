#!/bin/sh
# As functions/inference.sh: an exec-wrapper script gets no /opt/python from Lambda.
export PYTHONPATH="/opt/python${PYTHONPATH:+:$PYTHONPATH}"
exec python3 -m sse_server
