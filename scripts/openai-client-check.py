#!/usr/bin/env python3
"""Checks `autodidact serve` with the official OpenAI Python client, unchanged.

Usage: python scripts/openai-client-check.py BASE_URL MODEL [API_KEY]
       (BASE_URL as `serve` prints it, e.g. http://127.0.0.1:8000/v1)

Exercises what the server documents as supported: models.list, completions (string and
list prompts, n, stop, seed, logprobs=0), chat completions (n, stop, seed, logprobs),
streaming with usage, and the errors the client raises for a bad request, a wrong model
and a wrong key. Exits non-zero on the first failed check. Needs `pip install openai`.
"""
import sys

import openai

base, model = sys.argv[1], sys.argv[2]
key = sys.argv[3] if len(sys.argv) > 3 else "unused"
client = openai.OpenAI(base_url=base, api_key=key, max_retries=0)


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")
    print(f"ok: {what}")


models = client.models.list()
check([m.id for m in models.data] == [model], f"models.list names {model!r}")

c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0, logprobs=0)
ch = c.choices[0]
check(len(ch.logprobs.tokens) == len(ch.logprobs.token_logprobs) == c.usage.completion_tokens, "completion log-probs per token")
check("".join(ch.logprobs.tokens) == ch.text or ch.finish_reason == "stop", "tokens spell the text")
top = client.completions.create(model=model, prompt="The capital of France is", max_tokens=4, temperature=0, logprobs=3)
alts = top.choices[0].logprobs.top_logprobs
check(len(alts) == 4 and all(len(a) == 3 for a in alts), "logprobs=3 gives three alternatives per token")
check(all(max(a.values()) >= lp - 1e-5 for a, lp in zip(alts, top.choices[0].logprobs.token_logprobs)), "greedy tokens are the most likely")
again = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
check(again.choices[0].text == ch.text, "greedy is repeatable")

c = client.completions.create(model=model, prompt=["1, 2, 3,", "a, b, c,"], n=3, max_tokens=10, temperature=1.0, seed=7)
check([x.index for x in c.choices] == list(range(6)), "two prompts × n=3 give choices 0..5")
c2 = client.completions.create(model=model, prompt=["1, 2, 3,", "a, b, c,"], n=3, max_tokens=10, temperature=1.0, seed=7)
check([x.text for x in c.choices] == [x.text for x in c2.choices], "a seed repeats the samples")

r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
                                   max_tokens=40, temperature=0, stop=["7,"], logprobs=True)
m = r.choices[0]
check(m.finish_reason == "stop" and "7," not in m.message.content, f"chat stop string cuts the text: {m.message.content!r}")
check(len(m.logprobs.content) == r.usage.completion_tokens, "chat log-probs per token")
r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Is 2 + 2 = 4? Answer Yes or No."}],
                                   max_tokens=1, temperature=0, logprobs=True, top_logprobs=5)
check(len(r.choices[0].logprobs.content[0].top_logprobs) == 5, "chat top_logprobs=5 gives five alternatives")

whole = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Name three colors."}], max_tokens=24, temperature=0)
stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Name three colors."}], max_tokens=24, temperature=0,
                                        stream=True, stream_options={"include_usage": True})
text, finish, usage = "", None, None
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage
    for c in chunk.choices:
        text += c.delta.content or ""
        finish = c.finish_reason or finish
check(text == whole.choices[0].message.content, "streamed text equals the whole answer")
check(finish == whole.choices[0].finish_reason and usage.completion_tokens == whole.usage.completion_tokens, "stream ends with finish reason and usage")

stream = client.completions.create(model=model, prompt="Once upon a time", max_tokens=16, temperature=0, stream=True)
text = "".join(c.choices[0].text for c in stream if c.choices)
whole = client.completions.create(model=model, prompt="Once upon a time", max_tokens=16, temperature=0)
check(text == whole.choices[0].text, "streamed completion equals the whole one")

try:
    client.completions.create(model=model, prompt="x", max_tokens=4, temperature=7)
    check(False, "a bad temperature is refused")
except openai.BadRequestError as e:
    check(e.body.get("param") == "temperature", f"a bad temperature is a 400 naming the field: {e.body['message']}")
try:
    client.completions.create(model="nope", prompt="x", max_tokens=4)
    check(False, "a wrong model is refused")
except openai.NotFoundError as e:
    check("nope" in e.body["message"], "a wrong model is a 404")
if len(sys.argv) > 3:
    try:
        openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
        check(False, "a wrong key is refused")
    except openai.AuthenticationError:
        check(True, "a wrong key is a 401")
print("all checks passed")
