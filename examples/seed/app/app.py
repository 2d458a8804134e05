"""The app of examples/seed/compose.yaml: counts hits in redis, reached by its link's alias."""

import http.server

import redis

db = redis.Redis(host="db", port=6379)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hits=%d (read from redis)\n" % db.incr("hits")
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


http.server.ThreadingHTTPServer.request_queue_size = 128  # (listen backlog; 5 drops SYNs)
http.server.ThreadingHTTPServer(("", 8000), Handler).serve_forever()
