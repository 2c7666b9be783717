"""The web API of the word-count web-queue-worker (Python standard library
http.server, psycopg):

    POST /jobs        {"text": "..."} (or the text itself, as text/plain)
                      -> 202 {"id": "17", "status": "/jobs/17"}
    GET /jobs/<id>    -> 200 {"id": "17", "state": "ready" | "leased" | "done" | "failed" ...,
                              "counts": {"word": n, ...} when done, "error": "..." when failed}
                      -> 404 when there is no such job (or its record is older than a day)

A job is a message of the queue `wordcount` (setup.sql): its id is the job
id, broker.status reads its state, and the record a worker's broker.complete
or broker.fail leaves holds the outcome.

    python3 api.py --port 8000
"""
import argparse
import json
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
from psycopg.types.json import Jsonb

QUEUE = "wordcount"


class Database:
    """One autocommit connection shared by the request threads (psycopg
    serializes its use), opened again if it breaks."""

    def __init__(self, conninfo):
        self.conninfo, self.conn, self.lock = conninfo, None, threading.Lock()

    def execute(self, sql, params):
        with self.lock:
            if self.conn is None or self.conn.broken:
                self.conn = psycopg.connect(self.conninfo, autocommit=True)
            return self.conn.execute(sql, params)


class Handler(BaseHTTPRequestHandler):
    db = None   # set by main()

    def reply(self, status, body, location=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if location:
            self.send_header("Location", location)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        if self.path != "/jobs":
            return self.reply(HTTPStatus.NOT_FOUND, {"error": f"no such resource: {self.path}"})
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get_content_type() == "application/json":
            try:
                job = json.loads(body)
            except ValueError as exc:
                return self.reply(HTTPStatus.BAD_REQUEST, {"error": f"invalid JSON: {exc}"})
            if not isinstance(job, dict) or "text" not in job:
                return self.reply(HTTPStatus.BAD_REQUEST,
                                  {"error": 'the body must be a JSON object with "text"'})
        else:
            try:
                job = {"text": body.decode()}
            except UnicodeDecodeError:
                return self.reply(HTTPStatus.BAD_REQUEST, {"error": "the text is not UTF-8"})
        try:
            job_id = self.db.execute("SELECT broker.enqueue(%s, %s)",
                                     (QUEUE, Jsonb({"text": job["text"]}))).fetchone()[0]
        except psycopg.errors.ProgramLimitExceeded as exc:    # over max_message_size
            return self.reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": exc.diag.message_primary})
        self.reply(HTTPStatus.ACCEPTED, {"id": str(job_id), "status": f"/jobs/{job_id}"},
                   location=f"/jobs/{job_id}")

    def do_GET(self):
        m = re.fullmatch(r"/jobs/(\d{1,18})", self.path)
        if not m:
            return self.reply(HTTPStatus.NOT_FOUND, {"error": f"no such resource: {self.path}"})
        row = self.db.execute(
            "SELECT id, state, enqueued_at, finished_at, result FROM broker.status(%s, %s::bigint)",
            (QUEUE, int(m.group(1)))).fetchone()
        if row is None:
            return self.reply(HTTPStatus.NOT_FOUND, {"error": f"no job {m.group(1)}"})
        job_id, state, submitted, finished, result = row
        body = {"id": str(job_id), "state": state, "submitted": submitted.isoformat(),
                "finished": finished and finished.isoformat()}
        if state == "done":
            body.update(result)                  # {"counts": {...}, "words": n}
        elif state in ("failed", "dead_lettered"):
            body["error"] = (result or {}).get("error", "the job was delivered too many times")
        self.reply(HTTPStatus.OK, body)

    def log_message(self, fmt, *args):
        pass                                     # quiet; a real service would log


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    parser.add_argument("--dsn", default="", help="libpq connection string (default: PG* environment)")
    args = parser.parse_args()
    Handler.db = Database(args.dsn)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"listening on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
