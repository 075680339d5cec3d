"""A BASELINE for the benchmarks, not part of the product: the old app's upload route as
it handled memory. The old FastAPI app did `contents = await recording.read()` and then
wrote `contents` to storage, so every upload in flight held its whole recording in
memory. This reference does the same with the standard library only: it reads each
request body whole, finds the `recording` field in the multipart form, and writes it to
`{data}/sessions/{id}/recording_{problem}_{ms}.webm`, answering as the old app did.

    python3 bench/old_app_reference.py DATA_DIR   # prints "listening on http://127.0.0.1:PORT"

It is kind to itself where the old app was not: the file is written from a memoryview of
the body (no second copy), so its peak memory is a lower bound for the old app's.
"""

import json
import os
import re
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROUTE = re.compile(r"^/sessions/([A-Za-z0-9_-]{1,128})/recording$")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet: the benchmark reads only the answers
        pass

    def answer(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        match = ROUTE.match(self.path)
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)  # the whole body, in memory, as the old app held it
        if not match:
            return self.answer(404, {"detail": "Not Found"})
        boundary = re.search(r"boundary=([^;]+)", self.headers.get("Content-Type", ""))
        if not boundary:
            return self.answer(400, {"detail": "not a multipart form"})
        fields = parse_form(body, boundary.group(1).strip('"').encode())
        if "recording" not in fields or "problem_id" not in fields:
            return self.answer(400, {"detail": "recording and problem_id are required"})
        problem = bytes(fields["problem_id"]).decode()
        folder = os.path.join(DATA, "sessions", match.group(1))
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"recording_{problem}_{int(time.time() * 1000)}.webm")
        recording = fields["recording"]
        with open(path, "wb") as out:
            out.write(recording)
        self.answer(200, {"ok": True, "path": path, "size": len(recording)})


def parse_form(body, boundary):
    """Field name -> memoryview of its value, for a multipart/form-data body."""
    view = memoryview(body)
    fields = {}
    delimiter = b"--" + boundary
    at = body.find(delimiter)
    while at != -1:
        head_start = at + len(delimiter) + 2  # past the CRLF after the delimiter
        head_end = body.find(b"\r\n\r\n", head_start)
        if head_end == -1:
            break
        name = re.search(rb'name="([^"]*)"', body[head_start:head_end])
        value_end = body.find(b"\r\n" + delimiter, head_end + 4)
        if value_end == -1:
            break
        if name:
            fields[name.group(1).decode()] = view[head_end + 4 : value_end]
        at = value_end + 2
    return fields


if __name__ == "__main__":
    DATA = sys.argv[1]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()
