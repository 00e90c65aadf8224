"""A loopback OpenAI-compatible `/v1/chat/completions` server for tests.

`respond(body)` gets each request's JSON body and returns (HTTP status, reply
text); a non-200 status is sent with `Retry-After: <retry_after>` (0 by default).  `calls` records
(path, Authorization header, body) per request.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable


class LoopbackLLM:

  def __init__(self, respond: Callable[[dict], tuple[int, str]], retry_after: str = "0"):
    self.calls: list[tuple[str, str | None, dict]] = []
    outer = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *a):
        pass

      def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        outer.calls.append((self.path, self.headers.get("Authorization"), body))
        status, text = respond(body)
        if status != 200:
          self.send_response(status)
          self.send_header("Retry-After", retry_after)
          self.end_headers()
          return
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}],
                           "usage": {"prompt_tokens": 10, "completion_tokens": 3}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
    threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

  def close(self) -> None:
    self.httpd.shutdown()
    self.httpd.server_close()
