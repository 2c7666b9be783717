"""Checks the async data processor (run by test.sh, after setup.sql and
grants.sql, with the processor built): python3 test_processor.py PROCESSOR WORKDIR

 1. POST /message refuses what is not an array of {"timestamp", "value"}
    with 400 and a clear message, and enqueues nothing;
 2. 10,000 messages posted in 20 requests (201 each) are processed by pools
    of 3 workers per shard that grow to 4 with the backlog, never more;
    one worker kills itself after writing a batch and before deleting it
    (the test fault --kill-after-write), and the test kills another one
    (kill -9) while it holds a batch;
 3. every message is in exactly one file, exactly once, in a file of its
    shard; the history (history.json) accounts for every worker;
 4. SIGTERM while workers hold batches, in the middle of their work: the
    processor stops and releases the batches (none is finished, nothing stays
    leased); a new run processes them, numbering its workers after the files
    already there;
 5. the server restarts (pg_ctl restart -m fast) in the middle of 40 POSTs
    and their processing: every POST is answered 201, the workers, the
    endpoint and the supervisor connect again, no worker exits, and every
    message is in exactly one file exactly once.  Also the answer to one
    COMMIT is lost (the test fault --lose-commit-reply): the endpoint makes
    the transaction again, and its dedup keys store nothing twice; a client
    that sends a request again with the same Idempotency-Key neither.  Run
    when test.sh found how to restart the server (RESTART_PG_CTL,
    RESTART_PGDATA, RESTART_LOG).

The processor connects as the role `processor` (grants.sql).  Only the
Python standard library is used: HTTP with urllib, SQL through psql.
"""
import glob
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

PROCESSOR, WORK = sys.argv[1], sys.argv[2]
OUT = os.path.join(WORK, "out")
SHARDS = 4
failed = False


def check(cond, desc):
    global failed
    print(("ok - " if cond else "not ok - ") + desc, flush=True)
    failed |= not cond
    return cond


def sql(query):
    return subprocess.run(["psql", "-XAtq", "-c", query], check=True,
                          capture_output=True, text=True).stdout.strip()


def depth():
    """(ready, leased, total) over the ingest queues."""
    row = sql("SELECT sum(ready), sum(leased), sum(total) FROM broker.metrics()"
              " WHERE starts_with(queue, 'ingest_')")
    return tuple(int(x) for x in row.split("|"))


class Processor:
    def __init__(self, *args, log="processor.log"):
        port_file = os.path.join(WORK, "port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        self.log_path = os.path.join(WORK, log)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [PROCESSOR, "--dsn", "user=processor", "--port", "0", "--port-file", port_file,
             "--out", OUT, "--shards", str(SHARDS), *args],
            stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(600):
            if os.path.exists(port_file) or self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.url = "http://127.0.0.1:%s" % open(port_file).read().strip()

    def request(self, method, path, body=None, headers=None):
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    def post(self, messages, key=None):
        body = messages if isinstance(messages, bytes) else json.dumps(messages).encode()
        return self.request("POST", "/message", body,
                            {"Idempotency-Key": key} if key is not None else None)

    def workers(self):
        return self.request("GET", "/workers")[1]

    def stop(self, timeout=30):
        """SIGTERM; returns (exit status, seconds it took)."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = "still running after %s s" % timeout
        self.log.close()
        return code, time.monotonic() - t0

    def output(self):
        return open(self.log_path).read()


def wait_until(cond, timeout, every=0.2):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def timestamp(i):
    """Message i's timestamp: seconds since 1970, every fifth one as an RFC 3339 string."""
    secs = 1714564800 + i * 0.0137
    if i % 5 == 0:
        return datetime.fromtimestamp(secs, timezone.utc).isoformat().replace("+00:00", "Z")
    return secs


def shard_of(ts):
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    return math.floor(ts) % SHARDS


def read_files():
    """{file name: [parsed lines]}; a line that is not complete JSON is a failure."""
    files, bad = {}, []
    for path in sorted(glob.glob(os.path.join(OUT, "s*-w*.jsonl"))):
        with open(path) as f:
            text = f.read()
        if text and not text.endswith("\n"):
            bad.append(path + ": incomplete last line")
        lines = []
        for line in text.splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                bad.append(f"{path}: {line!r}")
        files[os.path.basename(path)] = lines
    return files, bad


def check_exactly_once(expected, what):
    files, bad = read_files()
    check(not bad, f"{what}: every line of every file is a complete JSON line {bad[:3]}")
    seen, ids, wrong_shard = {}, set(), []
    for name, lines in files.items():
        shard = int(re.match(r"s(\d+)-w", name).group(1))
        for rec in lines:
            seq = rec["message"]["value"]
            seen.setdefault(seq, []).append(name)
            ids.add(rec["id"])
            if shard_of(rec["message"]["timestamp"]) != shard:
                wrong_shard.append((name, seq))
    dups = {k: v for k, v in seen.items() if len(v) > 1}
    missing = sorted(set(expected) - set(seen))
    lines = sum(len(v) for v in files.values())
    check(not dups and not missing and set(seen) == set(expected),
          f"{what}: each of the {len(expected)} messages is in exactly one file, exactly once "
          f"({lines} lines in {len(files)} files; duplicated {list(dups.items())[:3]}, "
          f"missing {missing[:5]})")
    check(len(ids) == lines, f"{what}: no message id appears twice ({len(ids)} ids)")
    check(not wrong_shard, f"{what}: every message is in a file of its timestamp's shard "
                           f"{wrong_shard[:3]}")
    return files


for q in range(SHARDS):
    sql(f"SELECT broker.purge_queue('ingest_{q}')")

# --- 1. validation --------------------------------------------------------------------

p = Processor("--timeout", "3", "--work-ms", "5", "--kill-after-write", "s1-w4:3")
bad_requests = [
    (b"not json", "not valid JSON"),
    (b"", "it is empty"),
    (b'[{"timestamp": 1, "value": 1}] and more', "not valid JSON"),
    (b'{"timestamp": 1, "value": 1}', "must be a non-empty JSON array"),
    (b"[]", "must be a non-empty JSON array"),
    (b'[{"timestamp": 1, "value": 1}, {"value": 2}]',
     'message 2 of 2: "timestamp" is required; nothing was enqueued'),
    (b'[{"timestamp": null, "value": 1}]', '"timestamp" is required'),
    (b'[{"timestamp": "yesterday", "value": 1}]', "RFC 3339"),
    (b'[{"timestamp": true, "value": 1}]', "seconds since 1970"),
    (b'[17]', "must be an object"),
]
for body, expect in bad_requests:
    status, reply = p.post(body)
    check(status == 400 and expect in reply.get("error", ""),
          f"POST {body[:40]!r}: 400 {reply.get('error')!r}")
check(depth()[2] == 0, "the refused requests enqueued nothing")
status, reply = p.request("GET", "/message")
check(status == 405, f"GET /message: 405 {reply}")
status, reply = p.request("GET", "/nothing")
check(status == 404, f"GET /nothing: 404 {reply}")

# --- 2. 10,000 messages, two workers killed ----------------------------------------------

t0 = time.monotonic()
statuses, enqueued = [], 0
for start in range(1, 10001, 500):
    status, reply = p.post([{"timestamp": timestamp(i), "value": i}
                            for i in range(start, start + 500)])
    statuses.append(status)
    enqueued += reply.get("enqueued", 0)
check(statuses == [201] * 20 and enqueued == 10000,
      f"20 POSTs of 500 messages: 201 each, 10000 enqueued ({time.monotonic() - t0:.1f} s)")
status, reply = p.post([{"timestamp": "2024-05-01T12:00:03.5+02:00", "value": 0}])
check(status == 201 and reply["shards"] == {"ingest_%d" % ((1714557603) % SHARDS): 1},
      f"an RFC 3339 timestamp with an offset goes to its second's shard {reply}")
expected = list(range(0, 10001))

# kill -9 a worker of shard 2 while it holds a batch (delivered > deleted once
# it is dead; if it was between two batches, try another one)
victim = None
wait_until(lambda: depth()[2] < 9000, 60)
for attempt in range(5):
    w = next(w for w in p.workers()["workers"]
             if w["queue"] == "ingest_2" and w["how"] == "running" and not w["extra"])
    os.kill(w["pid"], signal.SIGKILL)
    time.sleep(0.3)
    w = next(x for x in p.workers()["workers"] if x["worker"] == w["worker"])
    if w["delivered"] > w["deleted"]:
        victim = w
        break
check(victim is not None,
      f"kill -9 of worker {victim and victim['worker']} while it held a batch "
      f"(delivered {victim and victim['delivered']}, deleted {victim and victim['deleted']}; "
      f"attempt {attempt + 1})")

check(wait_until(lambda: depth()[2] == 0, 120),
      f"the queues empty out ({time.monotonic() - t0:.1f} s after the first POST), "
      "the killed workers' batches redelivered after their 3 s leases")
check(wait_until(lambda: all(s["running"] == 3 for s in p.workers()["shards"]), 15),
      "the pools shrink back to 3 workers: the extra ones leave once their queue is empty")
code, took = p.stop()
check(code == 0, f"SIGTERM: the processor stops, exit status {code} ({took:.1f} s)")
log = p.output()

# --- 3. exactly once, and the history -------------------------------------------------------

files = check_exactly_once(expected, "10,001 messages, two workers killed")
with open(os.path.join(OUT, "history.json")) as f:
    history = json.load(f)
workers = {w["worker"]: w for w in history["workers"]}
print("# history:", json.dumps(history["shards"]))
for w in history["workers"]:
    print("#  ", w["worker"], w["queue"], w["how"], "delivered", w["delivered"],
          "deleted", w["deleted"], "lines", w["lines"])
first = history["workers"][:SHARDS * 3]
check([w["queue"] for w in first] == ["ingest_%d" % s for s in range(SHARDS) for _ in range(3)]
      and not any(w["extra"] for w in first), "each pool started with 3 workers")
peaks = [s["peak_workers"] for s in history["shards"]]
check(max(peaks) == 4 and min(peaks) >= 3, f"the pools grew with the backlog, to at most 4 {peaks}")
check(any(w["extra"] and w["how"] == "left, queue empty" for w in history["workers"]),
      "an extra worker left once its queue was empty")
check(workers["s1-w4"]["how"] == "killed by signal 9"
      and workers["s1-w4"]["delivered"] > workers["s1-w4"]["deleted"],
      f"s1-w4 (the test fault) died after a write, before its delete: {workers['s1-w4']}")
m = re.search(r"s1-w\d+: (\d+) of \1 redelivered messages were already written, skipped", log)
check(m is not None and int(m.group(1)) > 0,
      f"its redelivered batch was found in its file and skipped: {m and m.group(0)!r}")
check(workers[victim["worker"]]["how"] == "killed by signal 9",
      f"the history shows {victim['worker']} killed by signal 9")
check(all(w["lines"] == len(files.get(w["worker"] + ".jsonl", [])) for w in history["workers"]),
      "the history's line counts are the files'")
deleted = sum(w["deleted"] for w in history["workers"])
delivered = sum(w["delivered"] for w in history["workers"])
check(deleted == 10001 and delivered > deleted,
      f"broker.consumers: the workers deleted each message once ({deleted}) and took "
      f"{delivered - deleted} redelivered")
check(all(w["how"] in ("stopped", "left, queue empty", "killed by signal 9")
          for w in history["workers"]), "every other worker stopped or left cleanly")

# --- 4. a clean stop releases what the workers hold ----------------------------------------------

p = Processor("--timeout", "60", "--work-ms", "10000", "--grow-at", "1000000", log="stop.log")
status, reply = p.post([{"timestamp": 1714565000 + i, "value": i} for i in range(10001, 10101)])
check(status == 201, f"100 more messages, 25 per shard: {status} {reply}")
# every worker holds a batch of 5 (10 s of work each)
held = wait_until(lambda: depth()[1] == 5 * 3 * SHARDS, 30, 0.05)
ready, leased, total = depth()
code, took = p.stop(timeout=120)
check(held and code == 0,
      f"SIGTERM while every worker holds a batch under a 60 s lease, in its 10 s of work "
      f"({leased} leased): exit status {code} ({took:.1f} s)")
ready, leased, total = depth()
# finished batches would be deleted (total < 100), abandoned ones still leased
check(leased == 0 and ready == total == 100,
      f"the held batches were released, neither finished nor left to their leases "
      f"(ready {ready}, leased {leased}, total {total})")
check("released" in p.output(), "the workers say they released their batches")

p = Processor("--timeout", "3", log="rerun.log")
check(wait_until(lambda: depth()[2] == 0, 60), "a new run processes them")
code, took = p.stop()
check(code == 0, f"and stops, exit status {code}")
with open(os.path.join(OUT, "history.json")) as f:
    numbers = [int(w["worker"].split("-w")[1]) for w in json.load(f)["workers"]]
check(min(numbers) > max(int(w.split("-w")[1]) for w in workers),
      "its workers are numbered after the files already there (no file is reused)")
check_exactly_once(list(range(0, 10101)), "after the stop and the new run")

# --- 5. the server restarts in the middle of a run ------------------------------------------


def restart_server():
    """pg_ctl restart -m fast; (exit status, seconds, output)."""
    t = time.monotonic()
    r = subprocess.run([os.environ["RESTART_PG_CTL"], "restart", "-D", os.environ["RESTART_PGDATA"],
                        "-m", "fast", "-w", "-t", "60", "-l", os.environ["RESTART_LOG"]],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
    return r.returncode, time.monotonic() - t, (r.stdout + r.stderr).strip()


if not os.environ.get("RESTART_PG_CTL"):
    print("# the restart case is skipped:", os.environ.get("RESTART_WHY") or "no pg_ctl")
    sys.exit(1 if failed else 0)

t0 = time.monotonic()
p = Processor("--timeout", "3", "--work-ms", "5", "--lose-commit-reply", "3", log="restart.log")
FIRST, REQUESTS, EACH = 20001, 40, 100
answers = {}      # request number: (final status, 503s the client sent again)


def poster():
    """The client: 40 requests of 100, each with its Idempotency-Key, sent again
    (with the same key) when the answer is 503."""
    for j in range(REQUESTS):
        body = [{"timestamp": 1714566000 + (FIRST + j * EACH + i) * 0.37, "value": FIRST + j * EACH + i}
                for i in range(EACH)]
        for again in range(10):
            try:
                status, reply = p.post(body, key=f"restart-test-{j}")
            except (OSError, ValueError) as e:
                status, reply = None, str(e)
            if status != 503:
                break
            time.sleep(0.5)
        answers[j] = (status, again)
        time.sleep(0.05)


thread = threading.Thread(target=poster)
thread.start()
wait_until(lambda: len(answers) >= 12, 60, 0.02)
posted_before = len(answers)
code, took, out = restart_server()
posted_during = len(answers) - posted_before
check(code == 0, f"pg_ctl restart -m fast after {posted_before} of the {REQUESTS} POSTs "
                 f"({took:.1f} s; {posted_during} answered meanwhile): exit status {code} {out[-200:]!r}")
thread.join(120)
statuses = [answers.get(j, (None, 0))[0] for j in range(REQUESTS)]
resent = sum(answers.get(j, (None, 0))[1] for j in range(REQUESTS))
check(statuses == [201] * REQUESTS,
      f"every POST is answered 201 across the restart (the endpoint connected again; "
      f"the client sent {resent} again after a 503) {[s for s in statuses if s != 201][:5]}")
# a client that sends a request again (its answer lost, say): the same key, nothing stored twice
status, reply = p.post([{"timestamp": 1714566000 + (FIRST + i) * 0.37, "value": FIRST + i}
                        for i in range(EACH)], key="restart-test-0")
check(status == 201, f"request 0 sent again with its Idempotency-Key: {status} {reply}")
status, reply = p.post([{"timestamp": 1, "value": 1}], key="bad key")
check(status == 400 and "Idempotency-Key" in reply.get("error", ""),
      f"an Idempotency-Key with a space: 400 {reply.get('error')!r}")

check(wait_until(lambda: depth()[2] == 0, 60),
      f"the queues empty out after the restart ({time.monotonic() - t0:.1f} s after the start)")
code, took = p.stop()
check(code == 0, f"SIGTERM: the processor stops, exit status {code} ({took:.1f} s)")
log = p.output()
with open(os.path.join(OUT, "history.json")) as f:
    history = json.load(f)["workers"]
base = [w for w in history if not w["extra"]]
check(len(base) == SHARDS * 3 and all(w["how"] == "stopped" for w in base),
      "no worker exited because of the restart: the 12 workers of the pools' start all ran "
      f"until the stop, none was replaced {[(w['worker'], w['how']) for w in history][:14]}")
check(all(w["how"] in ("stopped", "left, queue empty") for w in history),
      f"every worker stopped or left cleanly {[(w['worker'], w['how']) for w in history]}")
reconnected = set(re.findall(r"^(s\d+-w\d+): reconnected after", log, re.M))
check(all(w["worker"] in reconnected for w in base),
      f"every one of them lost its connection and connected again "
      f"({len(reconnected)} workers reconnected; "
      f"{', '.join(sorted(set(re.findall(r'connection lost: ([^(]{0,60})', log))))[:300]})")
check("the supervisor reconnected" in log, "the supervisor connected again")
m = re.search(r"POST /message: connection lost \(attempt 1 of 4[^)]*\): (?!test fault)(.*)", log)
check(m is not None, f"a POST found its connection lost and made its transaction again: "
                     f"{m and m.group(1)[:100]!r}")
check(re.search(r"POST /message: connection lost \(attempt 1 of 4, in the COMMIT\): test fault", log)
      and re.search(r"POST /message: enqueued at attempt 2 \(request restart-test-2\)", log),
      "the answer to request 2's COMMIT was lost (test fault): its transaction was made again")
check_exactly_once(list(range(0, 10101)) + list(range(FIRST, FIRST + REQUESTS * EACH)),
                   f"after the restart ({time.monotonic() - t0:.1f} s)")

sys.exit(1 if failed else 0)
