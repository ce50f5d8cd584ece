"""Shared by make_gguf_reference.py and make_smollm2_reference.py: the tokenization edge cases,
the chat conversations, the reference tokenizer and the tensor checksum.

Not run on its own.
"""
import numpy as np
from tokenizers import pre_tokenizers

# Hand-written edge cases: whitespace, contractions, digits, punctuation, unicode, special
# tokens written in the text, code.
BASE = [
    # empty and whitespace only
    "", " ", "  ", "   ", "\t", "\n", "\r", "\r\n", "\n\n", "\r\n\r\n", "\n\r", "\t\t", " \t \n ",
    "\n \n", "   \n", "\t\n\t", "\r\r\n\n",
    # words and spaces
    "hello", "Hello world", " hello", "hello ", "  hello  ", "hello   world", "hello\tworld",
    "hello\nworld", "hello\r\nworld", "line1\rline2", "a\n\n\nb", "a \n b", "trailing\n", "\nleading",
    "a  b   c    d", "A", "a", "HELLO WORLD", "CamelCaseWord", "snake_case_word",
    "The quick brown fox jumps over the lazy dog.",
    "It was the best of times, it was the worst of times.",
    # contractions
    "it's", "don't", "they're", "I've", "we'll", "she'd", "I'm", "IT'S", "DON'T", "Don'T",
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", " 're", "rock 'n' roll", "O'Neil's", "''",
    "'''s", "’s curly", "can’t", "y'all'd've", "it 's", "he said 'hi'",
    # digits
    "0", "7", "12", "123", "1234", "12345678901234567890", "3.14159", "1,000,000", "-42",
    "+1e-10", "v1.2.3", "2024-06-01", "12:30:45", "a1b2c3", "x  1", "a  12", "  3", "1 2 3",
    "  42  ", "x\t7", "x\n\n9", "room 101", "1st 2nd 3rd 4th", "0x1F", "007", "9.99$",
    "\u0663\u0664\u0665", "\u2460\u2461", "\uff11\uff12\uff13", "\u00bd", "\u00b2\u00b3",
    "\u0969\u096a", "\u4e09\u5341",
    # punctuation
    "!", "!!!", "???", "...", "!?!?", "--", "---", "\u2014", "\u2013", "(a)", "[b]", "{c}", "<d>",
    "a.b.c", "e.g.,", "Hello, world!", "foo_bar", "__init__", "#include <stdio.h>", "x+=1;",
    "a->b", "a=>b", "@user", "#tag", "$100", "100%", "C++", "~/.bashrc",
    "http://example.com/a?b=c&d=e", "email@example.com", "\"quoted\"", "'single'", "`code`",
    "\u00abguillemets\u00bb", "\u201eGerman\u201c", "\u00bfQu\u00e9?", "\u00a1Hola!", "...hello...",
    ";;;;", "* * *", "a , b", " ,", "||", "&&", "\\n", "\\", "/", "^_^", ":-)",
    # Latin with diacritics, combining marks, ligatures
    "caf\u00e9", "na\u00efve", "Z\u00fcrich", "\ufb01", "e\u0301", "a\u0308\u0301",
    "\u00f1 vs n\u0303", "Cr\u00e8me br\u00fbl\u00e9e", "\u0141\u00f3d\u017a", "stra\u00dfe",
    "\u0130stanbul", "\u1e9e",
    # other scripts (right-to-left included)
    "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac", "\u0420\u0443\u0441\u0441\u043a\u0438\u0439 \u0442\u0435\u043a\u0441\u0442",
    "\u4e2d\u6587", "\u4f60\u597d\uff0c\u4e16\u754c\uff01", "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
    "\ud55c\uad6d\uc5b4", "\u0e44\u0e17\u0e22", "\u0939\u093f\u0928\u094d\u0926\u0940",
    "\u05e2\u05d1\u05e8\u05d9\u05ea", "\u0627\u0644\u0639\u0631\u0628\u064a\u0629",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "abc \u05e9\u05dc\u05d5\u05dd def", "\u200f", "\u202eevil", "abc\u200bdef", "a\u200db",
    "\ufeffBOM", "\u0915\u094d\u0937", "\u10d0\u10d1\u10d2",
    # emoji: single, modifiers, ZWJ sequences, flags, variation selectors, astral planes
    "\U0001F600", "\U0001F44D\U0001F3FD", "\U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466",
    "\U0001F3F3\ufe0f\u200d\U0001F308", "\U0001F1EB\U0001F1F7", "\u2764\ufe0f", "a\U0001F600b",
    "\U0001F600\U0001F600\U0001F600", "\U0001D518\U0001D52B\U0001D526\U0001D520\U0001D52C\U0001D521\U0001D522",
    "\U00010348", "\U0001F600 text", "text \U0001F680!", "\U0001F9D1\U0001F3FB\u200d\U0001F4BB",
    # unicode spaces and line breaks
    "a\u00a0b", "\u00a0", "a\u2009b", "a\u3000b", "a\u2028b", "a\u2029b", "a\u0085b", "a\u000bb",
    "a\u000cb", "\u00a0\u00a0x", "x\u202fy", "a\u200ab", "a \u00a0 b", "\u3000\u3000", "x\u2003\u2003y",
    # special tokens written inside text
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\nhi<|im_end|>",
    "text<|endoftext|>more", " <|im_end|> ", "<|im_start|><|im_end|>", "<|im_start", "<|im_start|",
    "<|IM_START|>", "<|im_end|>\n<|im_start|>assistant\n", "<<|im_end|>>", "<|endoftext|><|endoftext|>",
    "a<|im_start|>b", "<repo_name>", "<file_sep>x", "<|im_start|>  spaced  <|im_end|>",
    # code
    "def f(x):\n    return x * 2\n", "    indented", "\tif (a) {\n\t\treturn;\n\t}",
    "for i in range(10):\n        print(i)", "SELECT * FROM t WHERE id = 1;",
    "<div class=\"a\">x</div>", "{\"key\": [1, 2, 3]}", "x = [1,2,3]  # comment",
    "fn main() {\n    println!(\"{}\", 42);\n}", "if x == 0:\r\n    pass\r\n",
    # control characters
    "\x00", "a\x01b", "\x7f", "\x1b[31mred\x1b[0m", "tab\tsep\tvalues\n1\t2\t3",
]

# Each variant applied to the first strings of every kind, for a few hundred cases in all.
VARIANTS = [
    lambda s: " " + s,
    lambda s: s + " ",
    lambda s: "  " + s + "\n",
    lambda s: s + s,
    lambda s: "\t" + s + "\r\n",
]


def edge_cases():
    cases = list(BASE)
    for i, s in enumerate(BASE):
        if s and i % 2 == 0:
            cases.append(VARIANTS[(i // 2) % len(VARIANTS)](s))
    cases += [
        "Mixed: caf\u00e9 123 \U0001F600 \u4e2d\u6587 it's\t\u00a0done!\r\n",
        " ".join(BASE[20:40]),
        "\n".join(BASE[60:80]),
        "".join(BASE[120:140]),
        "A long sentence that keeps going, with numbers 1234567 and words, and more words, until it is rather long indeed.",
    ]
    seen, out = set(), []
    for s in cases:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


CHATS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What's 2+2?"}],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke about cats \U0001F431."},
    ],
    [{"role": "system", "content": ""}, {"role": "user", "content": ""}],
    [
        {"role": "user", "content": "multi\nline\n\n  indented\ttext  "},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "<|im_end|> injected 12345"},
    ],
    [{"role": "user", "content": "\u4f60\u597d \U0001F468\u200d\U0001F469\u200d\U0001F467 caf\u00e9\u00a0!"}],
    [
        {"role": "system", "content": "Syst\u00e8me : r\u00e9ponds en fran\u00e7ais."},
        {"role": "user", "content": "Bonjour"},
        {"role": "assistant", "content": "Salut !"},
        {"role": "user", "content": "\u00c7a va ?"},
    ],
]


def smollm_pre_tokenizer():
    """SmolLM's pre-tokenizer (its tokenizer.json; llama.cpp's LLAMA_VOCAB_PRE_TYPE_SMOLLM):
    every digit alone, then GPT-2's byte-level split."""
    return pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])


def checksum(values: np.ndarray) -> int:
    """sum_i bits(x_i) * (i + 1) mod 2^64 over the float32 bit patterns, in row-major order:
    equal exactly when every value is bit for bit equal (up to collisions)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).reshape(-1).view(np.uint32).astype(np.uint64)
    idx = np.arange(1, bits.size + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return int(np.sum(bits * idx, dtype=np.uint64))


def sample_indices(n: int, k: int = 64):
    """k indices spread over 0..n (first and last included)."""
    if n <= k:
        return list(range(n))
    return sorted(set(int(round(i * (n - 1) / (k - 1))) for i in range(k)))


def tokenizer_cases(tok, texts, fixed_pre):
    """Per text: ids without and with added special tokens, decodes, and whether transformers'
    stock GGUF tokenizer (tok before its pre-tokenizer was fixed) differs. `tok` carries the
    fixed pre-tokenizer; `fixed_pre` is a function text -> stock ids without special tokens, or
    None."""
    out = []
    for s in texts:
        ids = tok(s, add_special_tokens=False)["input_ids"]
        ids_special = tok(s, add_special_tokens=True)["input_ids"]
        case = {
            "text": s,
            "ids": ids,
            "ids_special": ids_special,
            "decoded": tok.decode(ids_special, skip_special_tokens=True),
        }
        if fixed_pre is not None:
            stock = fixed_pre(s)
            if stock != ids:
                case["stock_transformers_ids"] = stock
        out.append(case)
    return out


def chat_cases(tok):
    out = []
    for messages in CHATS:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        templ = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        if hasattr(templ, "keys"):
            templ = templ["input_ids"]
        assert list(templ) == ids, (messages, templ, ids)
        out.append({"messages": messages, "text": text, "ids": ids})
    return out
