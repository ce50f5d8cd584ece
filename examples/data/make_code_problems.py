#!/usr/bin/env python3
"""Writes code-problems.jsonl: 50 small Python problems in the style of MBPP, each with a
reference solution and unit tests, for examples/star-code.toml. Standard library only.

A line: {"id": "code-add", "prompt": "...", "answer": "<the tests: Python asserts>",
"solution": "<a reference completion: a fenced Python block>"}. The task runs the code of a
completion followed by the tests in the sandbox; it is correct when they pass. Before writing
the file, this script runs every reference solution against its tests.

Usage: python3 examples/data/make_code_problems.py [--out PATH]
"""
import argparse
import json
from pathlib import Path

# (name, what the function does, reference body, tests)
PROBLEMS = [
    ("add", "add(a, b) that returns a + b", "def add(a, b):\n    return a + b", ["add(1, 2) == 3", "add(-1, 1) == 0"]),
    ("square", "square(n) that returns n squared", "def square(n):\n    return n * n", ["square(3) == 9", "square(-4) == 16"]),
    ("is_even", "is_even(n) that returns True when n is even", "def is_even(n):\n    return n % 2 == 0", ["is_even(4)", "not is_even(7)"]),
    ("maximum", "maximum(xs) that returns the largest item of a non-empty list", "def maximum(xs):\n    return max(xs)", ["maximum([1, 5, 3]) == 5", "maximum([-2]) == -2"]),
    ("minimum", "minimum(xs) that returns the smallest item of a non-empty list", "def minimum(xs):\n    return min(xs)", ["minimum([4, 2, 8]) == 2", "minimum([0]) == 0"]),
    ("total", "total(xs) that returns the sum of a list of numbers", "def total(xs):\n    return sum(xs)", ["total([1, 2, 3]) == 6", "total([]) == 0"]),
    ("mean", "mean(xs) that returns the average of a non-empty list", "def mean(xs):\n    return sum(xs) / len(xs)", ["mean([1, 2, 3]) == 2", "mean([5]) == 5"]),
    ("reverse", "reverse(s) that returns the string s reversed", "def reverse(s):\n    return s[::-1]", ["reverse('abc') == 'cba'", "reverse('') == ''"]),
    ("is_palindrome", "is_palindrome(s) that tells whether s reads the same backwards", "def is_palindrome(s):\n    return s == s[::-1]", ["is_palindrome('level')", "not is_palindrome('ab')"]),
    ("count_vowels", "count_vowels(s) that counts the letters a, e, i, o, u in s", "def count_vowels(s):\n    return sum(c in 'aeiou' for c in s)", ["count_vowels('banana') == 3", "count_vowels('xyz') == 0"]),
    ("factorial", "factorial(n) that returns n! for n >= 0", "def factorial(n):\n    r = 1\n    for i in range(2, n + 1):\n        r *= i\n    return r", ["factorial(0) == 1", "factorial(5) == 120"]),
    ("fib", "fib(n) that returns the n-th Fibonacci number, fib(0) = 0, fib(1) = 1", "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a", ["fib(0) == 0", "fib(10) == 55"]),
    ("gcd", "gcd(a, b) that returns the greatest common divisor of two positive integers", "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a", ["gcd(12, 18) == 6", "gcd(7, 5) == 1"]),
    ("lcm", "lcm(a, b) that returns the least common multiple of two positive integers", "def lcm(a, b):\n    x, y = a, b\n    while y:\n        x, y = y, x % y\n    return a * b // x", ["lcm(4, 6) == 12", "lcm(3, 5) == 15"]),
    ("is_prime", "is_prime(n) that tells whether n is a prime number", "def is_prime(n):\n    if n < 2:\n        return False\n    i = 2\n    while i * i <= n:\n        if n % i == 0:\n            return False\n        i += 1\n    return True", ["is_prime(7)", "not is_prime(9)", "not is_prime(1)"]),
    ("digit_sum", "digit_sum(n) that returns the sum of the digits of n >= 0", "def digit_sum(n):\n    return sum(int(d) for d in str(n))", ["digit_sum(123) == 6", "digit_sum(0) == 0"]),
    ("count_char", "count_char(s, c) that counts how often the character c occurs in s", "def count_char(s, c):\n    return s.count(c)", ["count_char('hello', 'l') == 2", "count_char('abc', 'z') == 0"]),
    ("first", "first(xs) that returns the first item of a list, or None when it is empty", "def first(xs):\n    return xs[0] if xs else None", ["first([3, 4]) == 3", "first([]) is None"]),
    ("last", "last(xs) that returns the last item of a list, or None when it is empty", "def last(xs):\n    return xs[-1] if xs else None", ["last([3, 4]) == 4", "last([]) is None"]),
    ("evens", "evens(xs) that returns the even numbers of a list, in order", "def evens(xs):\n    return [x for x in xs if x % 2 == 0]", ["evens([1, 2, 3, 4]) == [2, 4]", "evens([1]) == []"]),
    ("squares", "squares(n) that returns the list of i * i for i from 1 to n", "def squares(n):\n    return [i * i for i in range(1, n + 1)]", ["squares(3) == [1, 4, 9]", "squares(0) == []"]),
    ("unique", "unique(xs) that returns the items of xs without repeats, in first-seen order", "def unique(xs):\n    seen = []\n    for x in xs:\n        if x not in seen:\n            seen.append(x)\n    return seen", ["unique([1, 2, 1, 3]) == [1, 2, 3]", "unique([]) == []"]),
    ("flatten", "flatten(xss) that joins a list of lists into one list", "def flatten(xss):\n    return [x for xs in xss for x in xs]", ["flatten([[1], [2, 3]]) == [1, 2, 3]", "flatten([]) == []"]),
    ("word_count", "word_count(s) that returns the number of words separated by spaces", "def word_count(s):\n    return len(s.split())", ["word_count('a b c') == 3", "word_count('') == 0"]),
    ("capitalize_words", "capitalize_words(s) that capitalizes the first letter of every word", "def capitalize_words(s):\n    return ' '.join(w.capitalize() for w in s.split(' '))", ["capitalize_words('hi there') == 'Hi There'", "capitalize_words('a') == 'A'"]),
    ("celsius", "celsius(f) that converts degrees Fahrenheit to Celsius", "def celsius(f):\n    return (f - 32) * 5 / 9", ["celsius(32) == 0", "celsius(212) == 100"]),
    ("absolute", "absolute(n) that returns the absolute value of n without abs()", "def absolute(n):\n    return -n if n < 0 else n", ["absolute(-3) == 3", "absolute(2) == 2"]),
    ("power", "power(b, e) that returns b to the power e for e >= 0", "def power(b, e):\n    r = 1\n    for _ in range(e):\n        r *= b\n    return r", ["power(2, 10) == 1024", "power(5, 0) == 1"]),
    ("clamp", "clamp(x, lo, hi) that limits x to the range lo..hi", "def clamp(x, lo, hi):\n    return max(lo, min(x, hi))", ["clamp(5, 0, 3) == 3", "clamp(-1, 0, 3) == 0", "clamp(2, 0, 3) == 2"]),
    ("sign", "sign(n) that returns -1, 0 or 1 by the sign of n", "def sign(n):\n    return (n > 0) - (n < 0)", ["sign(-5) == -1", "sign(0) == 0", "sign(9) == 1"]),
    ("count_positive", "count_positive(xs) that counts the numbers above zero", "def count_positive(xs):\n    return sum(1 for x in xs if x > 0)", ["count_positive([1, -1, 2]) == 2", "count_positive([]) == 0"]),
    ("second_largest", "second_largest(xs) that returns the second largest distinct value", "def second_largest(xs):\n    return sorted(set(xs))[-2]", ["second_largest([1, 3, 2]) == 2", "second_largest([5, 5, 4]) == 4"]),
    ("merge_sorted", "merge_sorted(a, b) that merges two sorted lists into one sorted list", "def merge_sorted(a, b):\n    return sorted(a + b)", ["merge_sorted([1, 4], [2, 3]) == [1, 2, 3, 4]", "merge_sorted([], [1]) == [1]"]),
    ("chunks", "chunks(xs, n) that splits xs into lists of n items (the last may be shorter)", "def chunks(xs, n):\n    return [xs[i:i + n] for i in range(0, len(xs), n)]", ["chunks([1, 2, 3], 2) == [[1, 2], [3]]", "chunks([], 2) == []"]),
    ("rotate", "rotate(xs, k) that moves the first k items of xs to its end", "def rotate(xs, k):\n    if not xs:\n        return []\n    k %= len(xs)\n    return xs[k:] + xs[:k]", ["rotate([1, 2, 3], 1) == [2, 3, 1]", "rotate([], 3) == []"]),
    ("char_freq", "char_freq(s) that returns a dict from each character to its count", "def char_freq(s):\n    d = {}\n    for c in s:\n        d[c] = d.get(c, 0) + 1\n    return d", ["char_freq('aab') == {'a': 2, 'b': 1}", "char_freq('') == {}"]),
    ("is_anagram", "is_anagram(a, b) that tells whether a and b have the same letters", "def is_anagram(a, b):\n    return sorted(a) == sorted(b)", ["is_anagram('listen', 'silent')", "not is_anagram('ab', 'abc')"]),
    ("binary", "binary(n) that returns the binary digits of n >= 0 as a string", "def binary(n):\n    return bin(n)[2:]", ["binary(5) == '101'", "binary(0) == '0'"]),
    ("from_binary", "from_binary(s) that reads a string of binary digits as a number", "def from_binary(s):\n    return int(s, 2)", ["from_binary('101') == 5", "from_binary('0') == 0"]),
    ("count_words", "count_words(s, w) that counts how often the word w occurs in s", "def count_words(s, w):\n    return s.split().count(w)", ["count_words('a b a', 'a') == 2", "count_words('', 'a') == 0"]),
    ("longest_word", "longest_word(s) that returns the first longest word of s", "def longest_word(s):\n    return max(s.split(), key=len)", ["longest_word('a bbb cc') == 'bbb'", "longest_word('x y') == 'x'"]),
    ("remove_spaces", "remove_spaces(s) that removes every space from s", "def remove_spaces(s):\n    return s.replace(' ', '')", ["remove_spaces('a b c') == 'abc'", "remove_spaces('') == ''"]),
    ("dot", "dot(a, b) that returns the dot product of two equal-length lists", "def dot(a, b):\n    return sum(x * y for x, y in zip(a, b))", ["dot([1, 2], [3, 4]) == 11", "dot([], []) == 0"]),
    ("running_sum", "running_sum(xs) that returns the cumulative sums of xs", "def running_sum(xs):\n    out, s = [], 0\n    for x in xs:\n        s += x\n        out.append(s)\n    return out", ["running_sum([1, 2, 3]) == [1, 3, 6]", "running_sum([]) == []"]),
    ("triangle", "triangle(n) that returns 1 + 2 + ... + n", "def triangle(n):\n    return n * (n + 1) // 2", ["triangle(4) == 10", "triangle(0) == 0"]),
    ("is_sorted", "is_sorted(xs) that tells whether xs is in non-decreasing order", "def is_sorted(xs):\n    return all(a <= b for a, b in zip(xs, xs[1:]))", ["is_sorted([1, 2, 2])", "not is_sorted([2, 1])"]),
    ("index_of", "index_of(xs, x) that returns the first index of x in xs, or -1", "def index_of(xs, x):\n    return xs.index(x) if x in xs else -1", ["index_of([4, 5], 5) == 1", "index_of([], 1) == -1"]),
    ("swap_pairs", "swap_pairs(s) that swaps each pair of neighbouring characters", "def swap_pairs(s):\n    out = ''\n    for i in range(0, len(s) - 1, 2):\n        out += s[i + 1] + s[i]\n    if len(s) % 2:\n        out += s[-1]\n    return out", ["swap_pairs('abcd') == 'badc'", "swap_pairs('abc') == 'bac'"]),
    ("max_gap", "max_gap(xs) that returns the largest difference between neighbours of xs", "def max_gap(xs):\n    return max(abs(b - a) for a, b in zip(xs, xs[1:]))", ["max_gap([1, 4, 6]) == 3", "max_gap([5, 1]) == 4"]),
    ("repeat_string", "repeat_string(s, n) that returns s repeated n times", "def repeat_string(s, n):\n    return s * n", ["repeat_string('ab', 3) == 'ababab'", "repeat_string('x', 0) == ''"]),
]


def line(name, what, body, tests):
    prompt = f"Write a Python function {what}."
    solution = f"```python\n{body}\n```"
    answer = "\n".join(f"assert {t}" for t in tests)
    return {"id": f"code-{name}", "prompt": prompt, "answer": answer, "solution": solution}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("code-problems.jsonl"))
    args = ap.parse_args()
    assert len(PROBLEMS) == 50, len(PROBLEMS)
    assert len({p[0] for p in PROBLEMS}) == 50, "names are unique"
    lines = [line(*p) for p in PROBLEMS]
    for p, l in zip(PROBLEMS, lines):
        scope = {}
        exec(p[2] + "\n" + l["answer"], scope)  # the reference solution passes its tests
    with open(args.out, "w") as f:
        for l in lines:
            f.write(json.dumps(l) + "\n")
    print(f"wrote {len(lines)} problems to {args.out}")


if __name__ == "__main__":
    main()
