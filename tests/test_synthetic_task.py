"""The synthetic instruction-following task, its gold labeler and the shipped tokenizer."""

import json
import random
import string
import subprocess
import sys

import pytest

from rlhf_fast.data.synthetic import CATEGORIES, KINDS, SyntheticTask

TASK = SyntheticTask(seed=0)


@pytest.fixture(scope="module")
def examples():
    task = SyntheticTask(seed=0)
    return task.sample(600, "train") + task.sample(200, "eval")


# ------------------------------------------------------------------ hand-written cases per kind

HAND = [
    # list: (distinct members, at most N) / N * min(1, N / #tokens)
    ("List 3 fruits.", "apple, banana, cherry", 1.0),
    ("List 3 fruits.", "Apple banana CHERRY!", 1.0),                 # case and punctuation ignored
    ("Name 3 fruits.", "apple, banana, dog", 2 / 3),                 # one item of another category
    ("Give me 3 fruits.", "apple, apple, cherry", 2 / 3),            # a duplicate counts once
    ("Write 2 different animals.", "dog", 1 / 2),                    # one short
    ("List 2 animals.", "dog, cat, cow", 2 / 3),                     # 2 / 2 items * 2 / 3 length
    ("List 2 colors.", "dog cat", 0.0),
    # count: longest common subsequence with the expected numbers / max(#expected, #tokens)
    ("Count from 4 to 7.", "4 5 6 7", 1.0),
    ("Count from 4 to 7.", "4, 5, 6, 7.", 1.0),
    ("Write the numbers from 4 to 7.", "4 5 6", 3 / 4),              # stops early
    ("List the numbers 4 to 7.", "4 5 6 7 8", 4 / 5),                # one too far
    ("Count from 4 to 7.", "5 6 7", 3 / 4),                          # starts late
    ("Count from 4 to 7.", "4 6 7", 3 / 4),                          # skips one
    ("Count from 4 to 7.", "7 6 5 4", 1 / 4),                        # backwards
    ("Count from 4 to 7.", "dog cat", 0.0),
    ("Count from 4 to 7.", "04 05 06 07", 1.0),                      # leading zeros normalised
    # repeat: min(#word, k) / max(k, #tokens)
    ("Repeat the word cat 3 times.", "cat cat cat", 1.0),
    ("Say cat 3 times.", "cat cat", 2 / 3),
    ("Write cat exactly 3 times.", "cat cat cat cat", 3 / 4),
    ("Repeat the word cat 3 times.", "cat dog cat", 2 / 3),
    ("Repeat the word cat 3 times.", "dog dog dog", 0.0),
    # reverse: 0.7 * LCS / max(#words, #tokens) + 0.3 * multiset overlap
    ("Reverse the words: red dog sun.", "sun dog red", 1.0),
    ("Reverse: red dog sun.", "red dog sun", 0.7 * 1 / 3 + 0.3),     # unreversed
    ("Write these words in reverse order: red dog sun bus.", "bus sun red dog", 0.7 * 3 / 4 + 0.3),
    ("Reverse the words: red dog sun.", "sun dog", 0.7 * 2 / 3 + 0.3 * 2 / 3),
    # limit: member needed; min(1, N / #tokens) * (0.5 + 0.5 * member fraction)
    ("Name a color in at most 2 words.", "blue", 1.0),
    ("Name a color in at most 2 words.", "Blue.", 1.0),
    ("Answer in at most 1 word: name an animal.", "the wolf", 0.5 * 0.75),
    ("Using no more than 2 words, name a fruit.", "the lime", 0.75),
    ("Name a color in at most 2 words.", "red green blue", 2 / 3),
    ("Name a color in at most 2 words.", "apple", 0.0),
]


@pytest.mark.parametrize("prompt,response,expected", HAND)
def test_hand_written_scores(prompt, response, expected):
    assert TASK.score(prompt, response) == pytest.approx(expected)


def test_every_kind_has_hand_cases():
    assert {TASK.parse(p)["kind"] for p, _, _ in HAND} == set(KINDS)


# ------------------------------------------------------------------ demonstrations and candidates

def test_demonstrations_score_one(examples):
    assert {ex["kind"] for ex in examples} == set(KINDS)
    for ex in examples:
        demo = TASK.demonstration(ex)
        assert TASK.score(ex["prompt"], demo) == 1.0, (ex, demo)
        assert len(demo.split()) <= 12
        # the demonstration of the parsed prompt (no spec fields carried) is perfect too
        assert TASK.score(ex["prompt"], TASK.demonstration({"prompt": ex["prompt"]})) == 1.0


def test_parse_recovers_spec(examples):
    for ex in examples:
        spec = TASK.parse(ex["prompt"])
        assert spec is not None and spec["kind"] == ex["kind"] and spec["template"] == ex["template"]
        for field in ("category", "n", "a", "b", "word", "k", "words"):
            if field in ex:
                assert spec[field] == ex[field]


def test_near_misses_are_graded(examples):
    rng = random.Random(0)
    for ex in examples:
        for near in TASK._near_misses(TASK._spec(ex), rng):
            s = TASK.score(ex["prompt"], near)
            assert 0.0 < s < 1.0, (ex["prompt"], near, s)


def test_candidates_mix(examples):
    rng = random.Random(0)
    for ex in examples:
        cands = TASK.candidates(ex, 4, rng)
        assert len(cands) == 4 and all(c.strip() for c in cands)
        scores = [TASK.score(ex["prompt"], c) for c in cands]
        assert max(scores) == 1.0
        assert min(scores) < 1.0
        assert len(set(cands)) == 4, cands
    # other k
    ex = examples[0]
    for k in (1, 2, 3, 7):
        assert len(TASK.candidates(ex, k, random.Random(k))) == k


def test_garbage_and_empty_score_zero(examples):
    rng = random.Random(0)
    junk = ["", "   ", "\n", "...", "zzz qqq", "the of and", "42", "lorem ipsum dolor"]
    for ex in examples[:200]:
        for r in junk:
            assert TASK.score(ex["prompt"], r) == 0.0, (ex["prompt"], r)
        # random letters: essentially never a member word
        garbage = " ".join("".join(rng.choices(string.ascii_lowercase, k=7)) for _ in range(5))
        assert TASK.score(ex["prompt"], garbage) <= 0.05


def test_unknown_prompts_score_zero():
    for p in ["", "Hello there.", "List 3 planets.", "Name a planet in at most 2 words.",
              "Count from 1 to 99999999.", "Say cat 0 times."]:
        assert TASK.score(p, "apple banana 1 2 3") == 0.0


def test_fuzz_never_raises():
    rng = random.Random(1234)
    alphabet = string.printable + "äé中🙂\x00\u200b"
    prompts = [ex["prompt"] for ex in TASK.sample(50, "train", rng=random.Random(5))]
    for _ in range(1500):
        r = "".join(rng.choices(alphabet, k=rng.randint(0, 60)))
        p = rng.choice(prompts) if rng.random() < 0.7 else "".join(rng.choices(alphabet, k=30))
        s = TASK.score(p, r)
        assert isinstance(s, float) and 0.0 <= s <= 1.0
    for r in ["9" * 10000, "0" * 5000, "cat " * 3000]:  # huge numbers and lengths
        assert 0.0 <= TASK.score("Count from 4 to 7.", r) <= 1.0
        assert 0.0 <= TASK.score("Say cat 3 times.", r) <= 1.0
    assert TASK.score(None, "x") == 0.0 and TASK.score("Say cat 3 times.", None) == 0.0


# ------------------------------------------------------------------ split, determinism, files

def test_held_out_split_is_disjoint():
    task = SyntheticTask(seed=3)
    train = {ex["prompt"] for ex in task.sample(3000, "train")}
    evals = task.sample(600, "eval")
    assert {ex["kind"] for ex in evals} == set(KINDS)
    assert not train & {ex["prompt"] for ex in evals}
    assert all(task.split_of(p) == "train" for p in train)
    # the split is a function of the prompt text alone, not of the seed
    assert all(SyntheticTask(seed=99).split_of(ex["prompt"]) == "eval" for ex in evals)
    with pytest.raises(ValueError):
        task.sample(1, "test")


def test_determinism(tmp_path):
    a, b = SyntheticTask(seed=7), SyntheticTask(seed=7)
    assert a.sample(50) == b.sample(50) and a.sample(5, "eval") == b.sample(5, "eval")
    assert a.sample(20) != SyntheticTask(seed=8).sample(20)
    kw = dict(n_sft=40, n_rm=30, n_ppo=20, n_eval=10, k=4)
    pa = SyntheticTask(seed=7).write_datasets(str(tmp_path / "a"), **kw)
    task = SyntheticTask(seed=7)
    task.sample(13)  # the instance's sample stream does not affect the files
    pb = task.write_datasets(str(tmp_path / "b"), **kw)
    assert sorted(pa) == sorted(pb) == ["eval", "ppo", "rm", "rm_eval", "sft"]
    for name in pa:
        assert open(pa[name], "rb").read() == open(pb[name], "rb").read(), name


def _read(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_write_datasets_formats(tmp_path):
    task = SyntheticTask(seed=0)
    paths = task.write_datasets(str(tmp_path), n_sft=60, n_rm=80, n_ppo=30, n_eval=25, k=5)
    sft, rm, rm_eval = _read(paths["sft"]), _read(paths["rm"]), _read(paths["rm_eval"])
    ppo, ev = _read(paths["ppo"]), _read(paths["eval"])
    assert (len(sft), len(rm), len(rm_eval), len(ppo), len(ev)) == (60, 80, 25, 30, 25)
    assert all(set(r) == {"prompt", "response"} for r in sft)
    assert all(task.score(r["prompt"], r["response"]) == 1.0 for r in sft)
    assert all(set(r) == {"prompt"} for r in ppo + ev)
    saw_tie = False
    for r in rm + rm_eval:
        assert set(r) == {"prompt", "responses", "ranks"}
        assert len(r["responses"]) == len(r["ranks"]) == 5
        scores = [task.score(r["prompt"], y) for y in r["responses"]]
        assert min(r["ranks"]) == 0
        for i in range(5):
            assert r["ranks"][i] == sum(s > scores[i] for s in scores)  # competition ranking
            for j in range(5):
                assert (r["ranks"][i] < r["ranks"][j]) == (scores[i] > scores[j])
                if scores[i] == scores[j]:
                    saw_tie = True if i != j else saw_tie
                    assert r["ranks"][i] == r["ranks"][j]
    assert saw_tie  # ties occur (e.g. two perfect lists) and share a rank
    train_prompts = {r["prompt"] for r in sft + rm + ppo}
    eval_prompts = {r["prompt"] for r in rm_eval + ev}
    assert not train_prompts & eval_prompts


def test_verbose_demonstrations(examples):
    """A fraction of SFT demonstrations opens with a preamble the gold labeler penalises; which
    prompts get one is fixed by the prompt (any process, any order); 0 and 1 are exact."""
    half, none, every = (SyntheticTask(seed=0, verbose_demos=f) for f in (0.5, 0.0, 1.0))
    demos = [half.sft_demonstration(ex) for ex in examples]
    verbose = [d != half.demonstration(ex) for d, ex in zip(demos, examples)]
    assert 0.44 < sum(verbose) / len(examples) < 0.56
    assert all(none.sft_demonstration(ex) == none.demonstration(ex) for ex in examples)
    assert all(every.sft_demonstration(ex) != every.demonstration(ex) for ex in examples)
    for ex, demo, v in zip(examples, demos, verbose):
        score = half.score(ex["prompt"], demo)
        assert (0.1 < score < 1.0) if v else score == 1.0, (ex["prompt"], demo)
        if v:
            assert demo.endswith(" " + half.demonstration(ex))  # the answer itself stays perfect
    assert demos == [SyntheticTask(seed=0, verbose_demos=0.5).sft_demonstration(ex) for ex in reversed(examples)][::-1]
    assert {d.split(" ")[0] for d, v in zip(demos, verbose) if v} == {"sure,", "ok,", "my"}  # every preamble used
    with pytest.raises(ValueError, match="synthetic_verbose_demos"):
        SyntheticTask(verbose_demos=1.5)


def test_verbose_demonstrations_reach_the_sft_rows(tmp_path):
    from rlhf_fast.config import DataConfig
    from rlhf_fast.data.sources import load_rows

    rows = load_rows(None, "sft", DataConfig(synthetic_train=200, synthetic_verbose_demos=0.5), "train", seed=3)
    task = SyntheticTask(seed=3)
    perfect = [task.score(r["prompt"], r["response"]) == 1.0 for r in rows]
    assert 0.3 < sum(perfect) / len(rows) < 0.7
    assert all(task.score(r["prompt"], r["response"]) == 1.0
               for r in load_rows(None, "sft", DataConfig(synthetic_train=50), "train", seed=3))
    path = SyntheticTask(seed=3, verbose_demos=1.0).write_datasets(str(tmp_path), n_sft=20, n_rm=4, n_ppo=2, n_eval=2)["sft"]
    assert all(task.score(r["prompt"], r["response"]) < 1.0 for r in _read(path))

# ------------------------------------------------------------------ tokenizer

@pytest.fixture(scope="module")
def tok():
    from rlhf_fast.data.tokenizer import load_tokenizer
    return load_tokenizer()


def test_tokenizer_specials(tok):
    assert 512 <= len(tok) <= 1024
    assert [tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    assert not getattr(tok, "chat_template", None)
    assert tok("Count from 1 to 3.")["input_ids"][0] not in (0, 1, 2, 3)  # adds no specials


def test_tokenizer_round_trip_and_lengths(tok, examples):
    rng = random.Random(0)
    lengths = []
    for ex in examples:
        for response in [TASK.demonstration(ex)] + TASK.candidates(ex, 3, rng):
            text = ex["prompt"] + "\n" + response
            ids = tok(text)["input_ids"]
            assert tok.unk_token_id not in ids
            assert " ".join(tok.decode(ids).split()) == " ".join(text.split())
            # the prompt/response boundary is a token boundary (trainers mask the prompt by length)
            assert tok(ex["prompt"] + "\n")["input_ids"] + tok(response)["input_ids"] == ids
            lengths.append(len(ids))
    assert max(lengths) < 40, max(lengths)
    assert sum(lengths) / len(lengths) < 20
    # arbitrary text still round-trips (byte level)
    odd = "Héllo, wörld! 12345 🙂"
    assert tok.decode(tok(odd)["input_ids"]) == odd


def test_no_torch_or_extension_import():
    code = ("import sys, rlhf_fast.data.synthetic, rlhf_fast.data.tokenizer; "
            "bad = [m for m in ('torch', 'rlhf_fast.ops', 'rlhf_fast._C') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_categories_are_disjoint_single_words():
    words = [w for items in CATEGORIES.values() for w in items]
    assert len(words) == len(set(words)) and all(w.isalpha() and w.islower() for w in words)
    assert all(8 <= len(items) <= 12 for items in CATEGORIES.values())
