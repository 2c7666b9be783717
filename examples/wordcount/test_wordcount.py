"""Checks the word-count web-queue-worker (run by test.sh after setup.sql and
grants.sql): the API runs as wordcount_api, two workers as wordcount_worker.
Prints "ok - ..." / "not ok - ..." lines; exits 1 if one failed."""
import json
import os
import random
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
failed = False


def check(cond, desc):
    global failed
    print(("ok - " if cond else "not ok - ") + desc, flush=True)
    failed |= not cond


def request(method, path, body=None, content_type="application/json"):
    req = urllib.request.Request(BASE + path, data=body, method=method,
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def submit(text):
    status, reply = request("POST", "/jobs", json.dumps({"text": text}).encode())
    assert status == 202, (status, reply)
    return reply["id"]


def poll(job_id, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        status, job = request("GET", f"/jobs/{job_id}")
        if job.get("state") in ("done", "failed", "dead_lettered") or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def start(script, *args, user):
    return subprocess.Popen([sys.executable, os.path.join(HERE, script), "--dsn", f"user={user}",
                             *args], stdout=subprocess.PIPE, text=True)


subprocess.run(["psql", "-XAtqc", "SELECT broker.purge_queue('wordcount')"], check=True,
               capture_output=True)
api = start("api.py", "--port", "0", user="wordcount_api")
BASE = re.search(r"http://\S+", api.stdout.readline()).group(0)
workers = []
try:
    # --- the API alone
    status, reply = request("POST", "/jobs", b"{not json")
    check(status == 400 and "invalid JSON" in reply["error"], f"POST /jobs bad JSON: 400 {reply}")
    status, reply = request("POST", "/jobs", b'{"txt": "a"}')
    check(status == 400 and '"text"' in reply["error"], f"POST /jobs without text: 400 {reply}")
    status, reply = request("GET", "/jobs/123456789")
    check(status == 404, f"GET /jobs/123456789: 404 {reply}")
    status, reply = request("GET", "/jobs/abc")
    check(status == 404, f"GET /jobs/abc: 404 {reply}")
    first = submit("The cat and the hat. THE END, don't you think? Don't!")
    status, job = request("GET", f"/jobs/{first}")
    check(status == 200 and job["state"] == "ready", f"a job submitted with no worker running is ready: {job}")
    status, reply = request("POST", "/jobs", "Straße straße 東京 東京 東京".encode(), "text/plain")
    plain = reply.get("id")
    check(status == 202 and reply["status"] == f"/jobs/{plain}", f"POST /jobs text/plain: 202 {reply}")

    # --- with two workers
    workers = [start("worker.py", "--name", f"wc-{n}", "--lease", "5", user="wordcount_worker")
               for n in (1, 2)]
    job = poll(first)
    check(job["state"] == "done" and job["counts"] == {"the": 3, "cat": 1, "and": 1, "hat": 1, "end": 1,
                                                        "don't": 2, "you": 1, "think": 1}
          and job["words"] == 11, f"the first job is done with its counts: {job}")
    job = poll(plain)
    check(job.get("counts") == {"straße": 2, "東京": 3}, f"unicode words are counted: {job.get('counts')}")

    random.seed(13)
    vocabulary = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    texts = []
    for n in range(30):
        words = [random.choice(vocabulary) for _ in range(random.randint(1, 400))]
        seps = [random.choice([" ", "  ", ", ", ".\n", "; ", " - "]) for _ in words]
        text = "".join(w.upper() if random.random() < 0.1 else w for w in
                       (x for pair in zip(words, seps) for x in pair))
        texts.append((submit(text), Counter(words)))
    results = [(poll(job_id), expect) for job_id, expect in texts]
    wrong = [(j["id"], j.get("state")) for j, expect in results if j.get("counts") != dict(expect)]
    check(not wrong, f"30 texts submitted at once: every job done with the right counts {wrong[:3]}")

    bad = submit(42)
    empty = submit("  ... -- !!")
    job = poll(bad)
    check(job["state"] == "failed" and "must be a string" in job["error"], f"bad input fails: {job}")
    job = poll(empty)
    check(job["state"] == "failed" and "no words" in job["error"], f"a text without words fails: {job}")
    row = subprocess.run(["psql", "-XAtqc", "SELECT sum(deleted) FROM broker.consumers"
                          " WHERE queue = 'wordcount' AND consumer IN ('wc-1', 'wc-2')"],
                         capture_output=True, text=True).stdout.strip()
    check(row == "34", f"broker.consumers: the two workers ended 34 jobs ({row})")
finally:
    for p in [api] + workers:
        p.terminate()
    for p in [api] + workers:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
check(workers and all(p.returncode == 0 for p in workers),
      f"the workers stop on SIGTERM (exit status {[p.returncode for p in workers]})")
sys.exit(1 if failed else 0)
