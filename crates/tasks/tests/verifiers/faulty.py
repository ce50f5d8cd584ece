#!/usr/bin/env python3
"""A verifier worker that misbehaves on purpose, for tests/verifier.rs.

It grades like examples/verifiers/exact_match.py (the answer after the last "#"), except:
- a completion containing HANG: never answers (sleeps);
- GARBAGE: writes a line that is not JSON;
- BADSCORE: answers with a score of 2;
- ERROR: answers with an "error";
- CLOSE: closes its stdout and keeps running;
- CRASH: exits with status 3, the first time only (a marker file next to --state records it);
  with --crash-after N, the first worker to have answered N requests does the same, and
  with --hang-after N or --garbage-after N it hangs, or writes a line that is not JSON,
  instead, and with --deaf-after N it closes its stdin and keeps running, so that the
  engine's next request meets a closed pipe (once: the --state file records it);
and with --reverse it holds replies until no request has arrived for 20 ms, then writes them
in reverse order (replies out of order).

With --chaos SEED --rate P (and --state FILE, a count of the workers started) it misbehaves
at random moments instead: before each reply, with probability P, it crashes, hangs, closes
its stdout or its stdin, writes a line that is not JSON, answers an id it was never sent, answers an id
it already answered, or answers a moment late. Each worker draws from SEED and its number
in the count, so a run's faults replay with its seed.
"""
import fcntl
import json
import os
import random
import select
import sys
import time


def started(state):
    """This worker's number: the count of workers started before it (kept in `state`)."""
    with open(state, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        n = int(f.read() or 0)
        f.seek(0)
        f.truncate()
        f.write(str(n + 1))
    return n


def chaos(rng, rate, req, answered):
    """A fault for `req`, drawn at random (None: answer it properly)."""
    if rng.random() >= rate:
        return None
    fault = rng.choice(["crash", "hang", "close", "deaf", "garbage", "unknown", "stale", "late"])
    print(f"chaos: {fault} on request {req['id']}", file=sys.stderr, flush=True)
    if fault == "crash":
        sys.exit(3)
    if fault == "hang":
        time.sleep(3600)
    if fault == "close":
        sys.stdout.flush()
        os.close(1)
        time.sleep(3600)
    if fault == "deaf":
        os.close(0)
        time.sleep(3600)
    if fault == "garbage":
        return "{\"id\": " + json.dumps(req["id"]) + ", \"score\": "
    if fault == "unknown":
        return json.dumps({"id": "never-sent-" + req["id"], "score": 1.0})
    if fault == "stale" and answered:
        return json.dumps({"id": rng.choice(answered), "score": 1.0})
    time.sleep(rng.uniform(0.0, 0.2))
    return None


def reply(req):
    c = req["completion"]
    if "GARBAGE" in c:
        return "this is not json"
    if "BADSCORE" in c:
        return json.dumps({"id": req["id"], "score": 2})
    if "ERROR" in c:
        return json.dumps({"id": req["id"], "error": "cannot read this"})
    found = c.rsplit("#", 1)[-1].strip()
    return json.dumps({"id": req["id"], "score": float(found == req["answer"]), "answer": found})


def main():
    reverse = "--reverse" in sys.argv
    state = sys.argv[sys.argv.index("--state") + 1] if "--state" in sys.argv else None
    def opt(name):
        return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else None

    crash_after, hang_after, garbage_after = opt("--crash-after"), opt("--hang-after"), opt("--garbage-after")
    deaf_after = opt("--deaf-after")
    rng = None
    if "--chaos" in sys.argv:
        rng = random.Random(opt("--chaos") * 1_000_003 + started(state))
        rate = float(sys.argv[sys.argv.index("--rate") + 1])
    replied = []
    answered = 0
    held = []
    stdin = sys.stdin.buffer
    while True:
        if reverse and held:
            ready, _, _ = select.select([stdin], [], [], 0.02)
            if not ready:
                for line in reversed(held):
                    sys.stdout.write(line + "\n")
                sys.stdout.flush()
                held = []
                continue
        if deaf_after is not None and answered >= deaf_after and not os.path.exists(state):
            open(state, "w").close()
            print(f"closing stdin after {answered} replies", file=sys.stderr, flush=True)
            os.close(0)
            time.sleep(3600)
        raw = stdin.readline()
        if not raw:
            return
        req = json.loads(raw)
        c = req["completion"]
        if "CLOSE" in c:
            sys.stdout.flush()
            os.close(1)
            time.sleep(3600)
        if "HANG" in c:
            print(f"hanging on {req['id']}", file=sys.stderr, flush=True)
            time.sleep(3600)
        if crash_after is not None and answered >= crash_after and not os.path.exists(state):
            open(state, "w").close()
            print(f"crashing after {answered} replies", file=sys.stderr, flush=True)
            sys.exit(3)
        if hang_after is not None and answered >= hang_after and not os.path.exists(state):
            open(state, "w").close()
            print(f"hanging after {answered} replies", file=sys.stderr, flush=True)
            time.sleep(3600)
        if garbage_after is not None and answered >= garbage_after and not os.path.exists(state):
            open(state, "w").close()
            sys.stdout.write("this is not json\n")
            sys.stdout.flush()
            continue
        if rng is not None:
            bad = chaos(rng, rate, req, replied)
            if bad is not None:
                sys.stdout.write(bad + "\n")
                sys.stdout.flush()
                continue
            replied.append(req["id"])
        answered += 1
        if "CRASH" in c and state and not os.path.exists(state):
            open(state, "w").close()
            print(f"crashing on {req['id']}", file=sys.stderr, flush=True)
            sys.exit(3)
        line = reply(req)
        if reverse:
            held.append(line)
        else:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
