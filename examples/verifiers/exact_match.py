#!/usr/bin/env python3
"""The reference implementation of autodidact's verifier protocol (standard library only).

autodidact starts this program as a pool of long-lived workers (`[task.verifier]`). For each
completion it writes one JSON line to stdin:

    {"id": "17", "prompt": "...", "completion": "...", "answer": <json|null>, "meta": <json|null>}

and reads one JSON line back from stdout, in any order (matched by "id"):

    {"id": "17", "score": 1.0, "correct": true, "answer": "42"}

- "score": a number in [0, 1]; required unless "error" is given.
- "correct": optional; defaults to score >= 1.
- "answer": optional; the answer read from the completion (samples with equal answers vote
  together).
- "error": optional; a reason the completion cannot be graded (it is recorded as ungradable,
  never as wrong).

Flush stdout after every reply: the engine pipelines requests and waits for each answer. Write
diagnostics to stderr; they go to logs/verifier-<n>.log in the run directory.

This verifier reads the answer after the last "#" of the completion (the built-in tasks'
convention; the whole completion when there is no "#") and compares it, stripped, with the
reference answer (a non-string reference is compared as its JSON text).
"""
import json
import sys


def grade(request):
    completion = request["completion"]
    found = completion.rsplit("#", 1)[-1].strip()
    reference = request.get("answer")
    if reference is None:
        return {"id": request["id"], "error": "the problem has no reference answer"}
    if not isinstance(reference, str):
        reference = json.dumps(reference)
    score = 1.0 if found == reference.strip() else 0.0
    return {"id": request["id"], "score": score, "answer": found}


def main():
    out = sys.stdout
    for line in sys.stdin:
        request = None
        try:
            request = json.loads(line)
            reply = grade(request)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            # Without an id the engine cannot match a reply: report on stderr and go on (the
            # request times out and is retried or recorded as a verifier error).
            rid = request.get("id") if isinstance(request, dict) else None
            print(f"exact_match: cannot grade {line.strip()[:200]!r}: {e}", file=sys.stderr)
            if rid is None:
                continue
            reply = {"id": rid, "error": f"cannot grade: {e}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
