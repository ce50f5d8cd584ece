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
  instead (once: the --state file records it);
and with --reverse it holds replies until no request has arrived for 20 ms, then writes them
in reverse order (replies out of order).
"""
import json
import os
import select
import sys
import time


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
