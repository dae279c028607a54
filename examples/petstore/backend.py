#!/usr/bin/env python3
"""A tiny backend for the petstore example: an in-memory pet list that also
echoes what it received, so you can see what the gateway forwarded."""
import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PETS = {"1": {"id": "1", "name": "Tom", "tag": "cat"}, "2": {"id": "2", "name": "Rex", "tag": "dog"}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _echo(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        return {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}

    def _handle(self):
        echo = self._echo()
        path = self.path.split("?", 1)[0]
        if path == "/pets" and self.command == "GET":
            return self._send(200, {"pets": list(PETS.values()), "echo": echo})
        if path == "/pets" and self.command == "POST":
            try:
                pet = json.loads(echo["body"] or "{}")
            except ValueError:
                return self._send(400, {"error": "invalid JSON", "echo": echo})
            pet_id = str(len(PETS) + 1)
            PETS[pet_id] = {"id": pet_id, **pet}
            return self._send(201, {"pet": PETS[pet_id], "echo": echo})
        if path.startswith("/pets/"):
            pet = PETS.get(path[len("/pets/"):])
            if self.command == "DELETE":
                PETS.pop(path[len("/pets/"):], None)
                return self._send(200, {"deleted": True, "echo": echo})
            return self._send(200 if pet else 404, {"pet": pet, "echo": echo})
        return self._send(200, {"echo": echo})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def log_message(self, fmt, *args):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"petstore backend on http://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
