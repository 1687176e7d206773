"""The shipped synthetic instruction-following task and its programmatic gold labeler.

The end-to-end demo (SFT -> reward model -> PPO) trains a tiny model on a CPU in minutes, so no
human can write demonstrations or rank samples. This module stands in for the labelers of
InstructGPT (Ouyang et al., 2022): it writes prompts from templates, demonstrations for SFT (perfect,
or for a chosen fraction opened by a verbose preamble: see ``sft_demonstration``), K candidate
responses of varied quality whose gold scores give the RM rankings, and a gold score that measures
how well the PPO policy follows held-out instructions.

Instruction kinds (each with a few phrasings; single-word items, numbers 0-20, answers <= 8 words):

==========  ===========================================  ==============================
kind        example prompt                               perfect response
==========  ===========================================  ==============================
list        "List 3 fruits."                             "pear, apple, plum"
count       "Count from 4 to 7."                         "4 5 6 7"
repeat      "Repeat the word cat 3 times."               "cat cat cat"
reverse     "Reverse the words: red dog sun."            "sun dog red"
limit       "Name a color in at most 2 words."           "blue"
==========  ===========================================  ==============================

Gold scores are graded in [0, 1] (see :meth:`SyntheticTask.score`), so PPO has a slope to climb:
a near-miss (one wrong item, an off-by-one count, a missing repeat, a swapped pair) scores strictly
between 0 and 1, garbage scores ~0 and the empty response 0. The score reads only the prompt
*text* and the response text: it holds no hidden state, is deterministic, ignores case,
punctuation and whitespace, and never raises.

Held-out split: a prompt belongs to "eval" iff a stable hash (sha256) of its normalised text falls
below ``eval_frac``; so no eval prompt ever appears in a train set, in any process or run.

Pure standard library: importing this module imports neither torch nor the rlhf_fast extension.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from typing import Any

# --------------------------------------------------------------------------------------------
# Vocabulary: single-word, lower-case items; no word belongs to two categories.
# --------------------------------------------------------------------------------------------

CATEGORIES: dict[str, tuple[str, ...]] = {
    "fruit": ("apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear", "plum",
              "melon", "kiwi", "lime"),
    "color": ("red", "blue", "green", "yellow", "purple", "pink", "brown", "black", "white",
              "gray"),
    "animal": ("dog", "cat", "horse", "cow", "sheep", "goat", "lion", "tiger", "bear", "wolf",
               "fox", "rabbit"),
    "vegetable": ("carrot", "potato", "onion", "pea", "bean", "corn", "cabbage", "spinach",
                  "garlic", "leek", "radish"),
    "tool": ("hammer", "saw", "drill", "wrench", "shovel", "rake", "axe", "chisel", "ladder",
             "pliers"),
    "vehicle": ("car", "bus", "train", "bike", "boat", "plane", "truck", "ship", "tram", "van"),
}
PLURALS: dict[str, str] = {"fruit": "fruits", "color": "colors", "animal": "animals",
                           "vegetable": "vegetables", "tool": "tools", "vehicle": "vehicles"}
_PLURAL_TO_CAT = {p: c for c, p in PLURALS.items()}
WORD_POOL: tuple[str, ...] = tuple(w for items in CATEGORIES.values() for w in items)
_CAT_OF_WORD = {w: c for c, items in CATEGORIES.items() for w in items}

KINDS: tuple[str, ...] = ("list", "count", "repeat", "reverse", "limit")

# What a verbose labeler writes before the answer (see SyntheticTask.sft_demonstration).
PREAMBLES: tuple[str, ...] = ("sure,", "ok, here it is:", "my answer is:")

# Parameter ranges of the generated prompts (the scorer accepts any parseable values).
LIST_N = (2, 4)          # list N items
COUNT_RANGE = (0, 20)    # numbers
COUNT_LEN = (2, 8)       # how many numbers a count answer holds
REPEAT_K = (2, 5)
REVERSE_LEN = (3, 5)
LIMIT_N = (1, 3)
_MAX_COUNT_SPAN = 1000   # a parsed count prompt spanning more is treated as unparseable

TEMPLATES: dict[str, tuple[str, ...]] = {
    "list": ("List {n} {plural}.", "Name {n} {plural}.", "Give me {n} {plural}.",
             "Write {n} different {plural}."),
    "count": ("Count from {a} to {b}.", "Write the numbers from {a} to {b}.",
              "List the numbers {a} to {b}."),
    "repeat": ("Repeat the word {word} {k} times.", "Say {word} {k} times.",
               "Write {word} exactly {k} times."),
    "reverse": ("Reverse the words: {words}.", "Write these words in reverse order: {words}.",
                "Reverse: {words}."),
    "limit": ("Name {art} {singular} in at most {n} {wordw}.",
              "Answer in at most {n} {wordw}: name {art} {singular}.",
              "Using no more than {n} {wordw}, name {art} {singular}."),
}

_GROUPS = {"n": r"(?P<n>\d{1,6})", "a": r"(?P<a>\d{1,6})", "b": r"(?P<b>\d{1,6})",
           "k": r"(?P<k>\d{1,6})", "plural": r"(?P<plural>[a-z]+)", "singular": r"(?P<singular>[a-z]+)",
           "word": r"(?P<word>[a-z]+)", "words": r"(?P<words>[a-z]+(?: [a-z]+)*)",
           "wordw": r"words?", "art": r"an?"}


def _template_regex(template: str) -> re.Pattern[str]:
    """'Count from {a} to {b}.' -> ^count from (?P<a>..) to (?P<b>..)$ over normalised text."""
    pieces = re.split(r"\{(\w+)\}", template)  # literal, field, literal, field, ..., literal
    literals = [_normalise_prompt(p, strip=False) for p in pieces[0::2]]
    literals[0], literals[-1] = literals[0].lstrip(), literals[-1].rstrip()
    out = [re.escape(literals[0])]
    for field, literal in zip(pieces[1::2], literals[1:]):
        out += [_GROUPS[field], re.escape(literal)]
    return re.compile("^" + "".join(out) + "$")


def _normalise_prompt(text: str, strip: bool = True) -> str:
    """Lower-case, punctuation other than ':' and ',' dropped, whitespace collapsed."""
    text = re.sub(r"[^a-z0-9:, ]+", " ", text.lower())
    text = re.sub(r"\s*([:,])\s*", r"\1 ", text)     # one space after ':' and ','
    text = re.sub(r" +", " ", text)
    return text.strip() if strip else text


_REGEXES: dict[str, list[re.Pattern[str]]] = {
    kind: [_template_regex(t) for t in ts] for kind, ts in TEMPLATES.items()}

_TOKEN_RE = re.compile(r"[a-z]+|[0-9]+")


def response_tokens(text: str) -> list[str]:
    """The words and numbers of a response: lower-cased, punctuation dropped, '07' -> '7'."""
    toks = _TOKEN_RE.findall(text.lower())
    return [t.lstrip("0") or "0" if t[0].isdigit() else t for t in toks]


def _ordered(expected: list[str], got: list[str]) -> float:
    """Longest common subsequence over max(len): right tokens in the right order, extra tokens
    penalised; a skipped, wrong or shifted token costs one position, not the rest of the answer."""
    if not got or not expected:
        return 0.0
    head = got[: 4 * len(expected)]  # caps the O(len^2) work; the denominator still sees it all
    prev = [0] * (len(head) + 1)
    for e in expected:
        cur = [0]
        for j, g in enumerate(head):
            cur.append(prev[j] + 1 if e == g else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1] / max(len(expected), len(got))


def _bag_overlap(expected: list[str], got: list[str]) -> float:
    """Multiset overlap over max(len): the right words in any order."""
    if not got or not expected:
        return 0.0
    left = list(expected)
    hits = 0
    for g in got:
        if g in left:
            left.remove(g)
            hits += 1
    return hits / max(len(expected), len(got))


def _stable_unit(text: str) -> float:
    """A number in [0, 1) from sha256 of text: the same in every process (unlike hash())."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2.0**64


class SyntheticTask:
    """Templated instructions, demonstrations, ranked candidates and a gold labeler.

    ``sample`` draws from a per-instance stream, so successive calls give new examples and a new
    ``SyntheticTask(seed)`` replays the same sequence. ``write_datasets`` depends only on ``seed``
    and its arguments (each file has its own stream): the same seed writes the same bytes.
    """

    def __init__(self, seed: int = 0, eval_frac: float = 0.2, verbose_demos: float = 0.0):
        if not 0.0 <= verbose_demos <= 1.0:
            raise ValueError(f"verbose_demos (data.synthetic_verbose_demos) must be a fraction in [0, 1], got {verbose_demos!r}")
        self.seed = int(seed)
        self.eval_frac = float(eval_frac)
        self.verbose_demos = float(verbose_demos)
        self._streams: dict[str, random.Random] = {}

    # ---------------------------------------------------------------- prompts and parsing

    def _rng(self, name: str) -> random.Random:
        return random.Random(f"rlhf_fast.synthetic/{self.seed}/{name}")

    def split_of(self, prompt: str) -> str:
        """'eval' or 'train', from a stable hash of the normalised prompt text."""
        return "eval" if _stable_unit(_normalise_prompt(prompt)) < self.eval_frac else "train"

    def _draw(self, rng: random.Random, kind: str) -> dict[str, Any]:
        """One example of ``kind`` (any split)."""
        t = rng.randrange(len(TEMPLATES[kind]))
        template = TEMPLATES[kind][t]
        if kind == "list":
            cat = rng.choice(sorted(CATEGORIES))
            n = rng.randint(*LIST_N)
            spec = {"category": cat, "n": n, "items": rng.sample(CATEGORIES[cat], n)}
            prompt = template.format(n=n, plural=PLURALS[cat])
        elif kind == "count":
            length = rng.randint(*COUNT_LEN)
            a = rng.randint(COUNT_RANGE[0], COUNT_RANGE[1] - length + 1)
            spec = {"a": a, "b": a + length - 1}
            prompt = template.format(**spec)
        elif kind == "repeat":
            spec = {"word": rng.choice(WORD_POOL), "k": rng.randint(*REPEAT_K)}
            prompt = template.format(**spec)
        elif kind == "reverse":
            words = rng.sample(WORD_POOL, rng.randint(*REVERSE_LEN))
            spec = {"words": words}
            prompt = template.format(words=" ".join(words))
        elif kind == "limit":
            cat = rng.choice(sorted(CATEGORIES))
            n = rng.randint(*LIMIT_N)
            spec = {"category": cat, "n": n, "items": [rng.choice(CATEGORIES[cat])]}
            prompt = template.format(n=n, singular=cat, wordw="word" if n == 1 else "words",
                                     art="an" if cat[0] in "aeiou" else "a")
        else:
            raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
        return {"prompt": prompt, "kind": kind, "template": t, **spec}

    def sample(self, n: int, split: str = "train", rng: random.Random | None = None) -> list[dict]:
        """``n`` examples of ``split`` ("train" or "eval"), kinds drawn uniformly.

        Each is ``{"prompt", "kind", "template", ...spec}`` with spec fields per kind: list
        ``category, n, items``; count ``a, b``; repeat ``word, k``; reverse ``words``; limit
        ``category, n, items`` (``items`` is the demonstration's choice of answer).
        """
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        if rng is None:
            rng = self._streams.setdefault(split, self._rng(f"sample/{split}"))
        out = []
        while len(out) < n:
            ex = self._draw(rng, rng.choice(KINDS))
            if self.split_of(ex["prompt"]) == split:
                out.append(ex)
        return out

    def parse(self, prompt: str) -> dict[str, Any] | None:
        """The spec of a prompt from its text alone (``kind`` and spec fields), or None."""
        text = _normalise_prompt(prompt)
        for kind, regexes in _REGEXES.items():
            for t, rx in enumerate(regexes):
                m = rx.match(text)
                if m is None:
                    continue
                g = m.groupdict()
                spec: dict[str, Any] = {"prompt": prompt, "kind": kind, "template": t}
                if kind == "list":
                    cat = _PLURAL_TO_CAT.get(g["plural"])
                    if cat is None or int(g["n"]) < 1:
                        continue
                    spec.update(category=cat, n=int(g["n"]))
                elif kind == "count":
                    a, b = int(g["a"]), int(g["b"])
                    if abs(b - a) > _MAX_COUNT_SPAN:
                        continue
                    spec.update(a=a, b=b)
                elif kind == "repeat":
                    k = int(g["k"])
                    if not 1 <= k <= _MAX_COUNT_SPAN:
                        continue
                    spec.update(word=g["word"], k=k)
                elif kind == "reverse":
                    spec.update(words=g["words"].split())
                elif kind == "limit":
                    if g["singular"] not in CATEGORIES or int(g["n"]) < 1:
                        continue
                    spec.update(category=g["singular"], n=int(g["n"]))
                return spec
        return None

    # ---------------------------------------------------------------- responses

    def _spec(self, ex: dict) -> dict:
        if "kind" in ex and all(f in ex for f in _SPEC_FIELDS[ex["kind"]]):
            return ex
        spec = self.parse(ex["prompt"])
        if spec is None:
            raise ValueError(f"not a prompt of this task: {ex['prompt']!r}")
        return spec

    def _items(self, spec: dict) -> list[str]:
        """The answer items of a list/limit example: its own, or a choice fixed by the prompt."""
        if spec.get("items"):
            return list(spec["items"])
        rng = random.Random(_normalise_prompt(spec["prompt"]))
        pool = CATEGORIES[spec["category"]]
        return rng.sample(pool, min(spec["n"], len(pool))) if spec["kind"] == "list" else [rng.choice(pool)]

    def demonstration(self, ex: dict) -> str:
        """A perfect response (gold score 1.0) to an example from ``sample`` or ``parse``."""
        spec = self._spec(ex)
        return _render(spec["kind"], self._expected(spec))

    def sft_demonstration(self, ex: dict) -> str:
        """The demonstration a labeler writes for SFT: the perfect response, except that a fraction
        ``verbose_demos`` of prompts (fixed by a hash of the prompt) get a verbose labeler who opens
        with a preamble ("sure, ...") that the gold labeler penalises as extra words.

        Real demonstrations are of mixed quality; rankings can then teach what imitation cannot (the
        premise of InstructGPT). With only perfect demonstrations a well-trained SFT model leaves
        PPO almost nothing to improve on this task."""
        demo = self.demonstration(ex)
        key = f"rlhf_fast.synthetic/{self.seed}/verbose/{_normalise_prompt(ex['prompt'])}"
        if _stable_unit(key) >= self.verbose_demos:
            return demo
        return PREAMBLES[int(_stable_unit(key + "/preamble") * len(PREAMBLES))] + " " + demo

    def _expected(self, spec: dict) -> list[str]:
        kind = spec["kind"]
        if kind in ("list", "limit"):
            return self._items(spec)
        if kind == "count":
            a, b = spec["a"], spec["b"]
            return [str(i) for i in (range(a, b + 1) if a <= b else range(a, b - 1, -1))]
        if kind == "repeat":
            return [spec["word"]] * spec["k"]
        return list(reversed(spec["words"]))

    def candidates(self, ex: dict, k: int, rng: random.Random) -> list[str]:
        """``k`` responses of varied quality, in random order.

        At least one perfect response (k >= 1), one near-miss (k >= 2) and one poor response
        (k >= 3); further slots are drawn from the three pools. Responses are distinct where the
        pools allow it; none is empty.
        """
        spec = self._spec(ex)
        pools = (self._perfects, self._near_misses, self._poor)
        order = [0, 1, 2][:k] + [rng.choice((0, 1, 1, 2)) for _ in range(k - 3)]
        out: list[str] = []
        for which in order:
            cand = ""
            for pool in (which, 1, 2):  # a pool with nothing new left hands the slot on
                for _ in range(10):  # retry for a distinct, non-empty response
                    cand = rng.choice(pools[pool](spec, rng))
                    if cand and cand not in out:
                        break
                if cand and cand not in out:
                    break
            out.append(cand or self.demonstration(spec))
        rng.shuffle(out)
        return out

    def _perfects(self, spec: dict, rng: random.Random) -> list[str]:
        kind = spec["kind"]
        demo = _render(kind, self._expected(spec))
        if kind == "list":
            pool = CATEGORIES[spec["category"]]
            return [demo, _render(kind, rng.sample(pool, min(spec["n"], len(pool))))]
        if kind == "limit":
            return [demo, rng.choice(CATEGORIES[spec["category"]])]
        return [demo]

    def _near_misses(self, spec: dict, rng: random.Random) -> list[str]:
        """Almost right: one item wrong, off-by-one length, one repeat missing, a swapped pair."""
        kind = spec["kind"]
        exp = self._expected(spec)
        out = []
        if kind == "list":
            cat, n = spec["category"], spec["n"]
            others = [w for w in WORD_POOL if _CAT_OF_WORD[w] != cat]
            rest = [w for w in CATEGORIES[cat] if w not in exp]
            i = rng.randrange(n)
            out.append(_render(kind, exp[:i] + [rng.choice(others)] + exp[i + 1:]))  # wrong item
            if n >= 2:
                out.append(_render(kind, exp[:i] + [exp[i - 1]] + exp[i + 1:]))      # a duplicate
                out.append(_render(kind, exp[:-1]))                                 # one short
            if rest:
                out.append(_render(kind, exp + [rng.choice(rest)]))                 # one extra
        elif kind == "count":
            a, b = spec["a"], spec["b"]
            step = 1 if a <= b else -1
            if len(exp) >= 2:
                out.append(_render(kind, exp[:-1]))                                  # stops early
                out.append(_render(kind, exp[1:]))                                   # starts late
            out.append(_render(kind, exp + [str(b + step)]))                         # one too far
            if len(exp) >= 3:
                i = rng.randrange(1, len(exp) - 1)
                out.append(_render(kind, exp[:i] + exp[i + 1:]))                     # skips one
            i = rng.randrange(len(exp))
            out.append(_render(kind, exp[:i] + [str(int(exp[i]) + 1 + rng.randrange(3))] + exp[i + 1:]))
        elif kind == "repeat":
            if len(exp) >= 2:
                out.append(_render(kind, exp[:-1]))                                  # one missing
            out.append(_render(kind, exp + exp[:1]))                                 # one extra
            i = rng.randrange(len(exp))
            wrong = rng.choice([w for w in WORD_POOL if w != spec["word"]])
            out.append(_render(kind, exp[:i] + [wrong] + exp[i + 1:]))                # one wrong
        elif kind == "reverse":
            words = spec["words"]
            if words != exp:
                out.append(_render(kind, words))                                     # not reversed
            if len(exp) >= 2:
                i = rng.randrange(len(exp) - 1)
                out.append(_render(kind, exp[:i] + [exp[i + 1], exp[i]] + exp[i + 2:]))  # swapped
                out.append(_render(kind, exp[:-1]))                                  # one dropped
        elif kind == "limit":
            cat, n = spec["category"], spec["n"]
            pool = CATEGORIES[cat]
            out.append(_render("list", rng.sample(pool, min(n + 1, len(pool)))))     # too many
            out.append(" ".join(["my", "answer", "is"][-n:] + [exp[0]]))            # one too long
            out.append("the " + exp[0])                                              # a filler word
        return [o for o in out if o] or [_render(kind, exp[:1])]

    def _poor(self, spec: dict, rng: random.Random) -> list[str]:
        """Wrong: another instruction's answer, truncated, random words."""
        kind = spec["kind"]
        exp = self._expected(spec)
        other_kind = rng.choice([k for k in KINDS if k != kind])
        other = self._draw(rng, other_kind)
        out = [self.demonstration(other),
               " ".join(rng.choice(WORD_POOL) for _ in range(rng.randint(1, 6)))]
        if len(exp) >= 3:
            out.append(_render(kind, exp[:1]))                                       # truncated
        if kind == "limit":
            others = [w for w in WORD_POOL if _CAT_OF_WORD[w] != spec["category"]]
            out.append(rng.choice(others))                                           # wrong category
        return out

    # ---------------------------------------------------------------- gold labeler

    def score(self, prompt: str, response: str) -> float:
        """Gold score in [0, 1] from the prompt text and the response text alone.

        Tokens are the response's lower-case words and numbers (punctuation ignored).
          list N c:    (distinct members of c, at most N) / N  *  min(1, N / #tokens)
          count a..b:  LCS(expected sequence, tokens) / max(#expected, #tokens)
          repeat w k:  min(#w, k) / max(k, #tokens)
          reverse ws:  0.7 * LCS with the reversed words / max(#words, #tokens)
                       + 0.3 * multiset overlap (the right words in any order)
          limit c N:   0 unless a member of c is present; else min(1, N / #tokens) *
                       (0.5 + 0.5 * fraction of tokens that are members of c)
        An empty response, or a prompt this task cannot parse, scores 0. Never raises.
        """
        try:
            return self._score(prompt, response)
        except Exception:  # the labeler must never crash a training run; parse failures -> 0
            return 0.0

    def _score(self, prompt: str, response: str) -> float:
        if not isinstance(prompt, str) or not isinstance(response, str):
            return 0.0
        spec = self.parse(prompt)
        toks = response_tokens(response)
        if spec is None or not toks:
            return 0.0
        kind = spec["kind"]
        if kind == "list":
            members = CATEGORIES[spec["category"]]
            n = spec["n"]
            distinct = {t for t in toks if t in members}
            return min(len(distinct), n) / n * min(1.0, n / len(toks))
        if kind == "limit":
            members = CATEGORIES[spec["category"]]
            inside = sum(t in members for t in toks)
            if inside == 0:
                return 0.0
            return min(1.0, spec["n"] / len(toks)) * (0.5 + 0.5 * inside / len(toks))
        if kind == "repeat":
            hits = sum(t == spec["word"] for t in toks)
            return min(hits, spec["k"]) / max(spec["k"], len(toks))
        exp = self._expected(spec)
        if kind == "count":
            return _ordered(exp, toks)
        return 0.7 * _ordered(exp, toks) + 0.3 * _bag_overlap(exp, toks)

    # ---------------------------------------------------------------- datasets

    def rank(self, prompt: str, responses: list[str]) -> tuple[list[int], list[float]]:
        """Ranks (0 = best; rank = how many responses score strictly higher, so ties share a rank)
        and the gold scores."""
        scores = [round(self.score(prompt, r), 9) for r in responses]
        return [sum(o > s for o in scores) for s in scores], scores

    def write_datasets(self, out_dir: str, n_sft: int = 2000, n_rm: int = 2000, n_ppo: int = 2000,
                       n_eval: int = 200, k: int = 4, n_rm_eval: int | None = None) -> dict[str, str]:
        """Write the stage datasets as JSONL under ``out_dir``; return name -> path.

        sft.jsonl {"prompt", "response"} (train prompts, demonstrations; see ``sft_demonstration``);
        rm.jsonl / rm_eval.jsonl {"prompt", "responses": [k], "ranks": [k]} (train / held-out
        prompts; ranks from gold scores, 0 = best, ties equal); ppo.jsonl {"prompt"} (train);
        eval.jsonl {"prompt"} (held-out). ``n_rm_eval`` defaults to ``n_eval``.
        """
        os.makedirs(out_dir, exist_ok=True)
        n_rm_eval = n_eval if n_rm_eval is None else n_rm_eval
        paths = {}

        def write(name: str, rows: list[dict]) -> None:
            path = os.path.join(out_dir, f"{name}.jsonl")
            with open(path, "w", encoding="utf-8", newline="\n") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            paths[name] = path

        def ranked(n: int, split: str, name: str) -> list[dict]:
            rng = self._rng(f"data/{name}")
            rows = []
            for ex in self.sample(n, split, rng=rng):
                responses = self.candidates(ex, k, rng)
                ranks, _ = self.rank(ex["prompt"], responses)
                rows.append({"prompt": ex["prompt"], "responses": responses, "ranks": ranks})
            return rows

        sft = self.sample(n_sft, "train", rng=self._rng("data/sft"))
        write("sft", [{"prompt": ex["prompt"], "response": self.sft_demonstration(ex)} for ex in sft])
        write("rm", ranked(n_rm, "train", "rm"))
        write("rm_eval", ranked(n_rm_eval, "eval", "rm_eval"))
        write("ppo", [{"prompt": ex["prompt"]} for ex in self.sample(n_ppo, "train", rng=self._rng("data/ppo"))])
        write("eval", [{"prompt": ex["prompt"]} for ex in self.sample(n_eval, "eval", rng=self._rng("data/eval"))])
        return paths


_SPEC_FIELDS = {"list": ("category", "n"), "count": ("a", "b"), "repeat": ("word", "k"),
                "reverse": ("words",), "limit": ("category", "n")}


def _render(kind: str, items: list[str]) -> str:
    """Lists (list kind) are comma-separated; every other answer is space-separated."""
    return ", ".join(items) if kind == "list" else " ".join(items)
