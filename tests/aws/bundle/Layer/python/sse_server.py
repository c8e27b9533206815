"""A tiny HTTP server that streams server-sent events slowly (stdlib only)."""

import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/ready":
            self._send(200, b"ok")
        elif self.path.startswith("/v1/stream"):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("x-seen-trace", self.headers.get("X-Amzn-Trace-Id", ""))
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for n in range(3):
                data = f"data: {n}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                time.sleep(0.7)
            self.wfile.write(b"0\r\n\r\n")
        else:
            self._send(404, b"no")

    do_POST = do_GET

    def _send(self, status, body):
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(os.environ["AWS_LWA_PORT"])), Handler).serve_forever()
