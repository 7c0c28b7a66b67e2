"""Seed 004's polynomial lines: sympy-exact, distributed like the real task, tokenized reversibly."""
import random
import time
from pathlib import Path

import pytest
import torch

from leantrain.data import load
from leantrain.data.polynomial import (
    BOS,
    EOS,
    VOCAB,
    CharTokenizer,
    Factors,
    exact_match,
    exact_match_ids,
    expand_with_sympy,
    format_line,
    generate_lines,
    read_lines,
    sample_factors,
    sympy_line,
)
from leantrain.data.polynomial_parse import canonical_factored, parse_factors
from leantrain.data.polynomial_stats import compare_to_real, read_real_lines
from leantrain.errors import UsageError

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "polynomial" / "real-val-100k.txt"
needs_real = pytest.mark.skipif(not REAL.is_file(), reason=f"{REAL} is absent")


def test_fast_printer_equals_sympy_on_random_and_edge_factors():
    rng = random.Random(1)
    cases = [sample_factors(rng) for _ in range(150)]
    wraps = ["", "sin", "cos", "tan"] * 5
    cases += [Factors(f.variable, w, f.a1, f.b1, f.a1, f.b1) for f, w in zip(cases[:20], wraps, strict=True)]
    cases += [Factors("x", w, a1, b1, a2, b2) for w in ("", "tan") for a1, b1, a2, b2 in [
        (-1, 3, 1, -3), (-1, 3, -1, 3), (1, 0, -1, 0), (-1, 0, 2, 5), (3, 0, -2, 7), (-2, 5, -2, 3), (-2, 5, -3, 5),
        (1, 2, 1, -2), (-1, 0, -1, 4), (2, -4, 1, -2), (-9, -32, -9, -32), (8, 31, 8, 31),
    ]]
    for f in cases:
        assert format_line(f) == sympy_line(f), f


def test_generated_lines_are_sympy_expansions_of_their_factors():
    for line in generate_lines(60, seed=5):
        left, _, right = line.partition("=")
        assert expand_with_sympy(left) == right, line
        assert len(left) <= 29 and len(right) <= 29


def test_generation_is_deterministic_fast_and_sympy_engine_agrees():
    start = time.perf_counter()
    lines = generate_lines(10_000, seed=0)
    assert time.perf_counter() - start < 3.0
    assert lines == generate_lines(10_000, seed=0) and lines != generate_lines(10_000, seed=1)
    assert generate_lines(40, seed=2, engine="sympy") == generate_lines(40, seed=2)
    assert all(max(map(len, line.split("="))) <= 20 for line in generate_lines(200, seed=0, max_len=20))


@needs_real
def test_printer_reproduces_every_real_line_from_its_parsed_factors():
    for line in read_real_lines(REAL):
        assert format_line(parse_factors(line)) == line, line


@needs_real
def test_generated_distribution_matches_the_real_lines():
    distances = compare_to_real(generate_lines(20_000, seed=0), read_real_lines(REAL, limit=40_000))
    # Sampling noise alone gives ~0.005-0.02 here; a wrong variable weighting, trig share, bare-term probability
    # or coefficient range moves the matching statistic by 0.05 or more.
    assert max(distances.values()) < 0.03, distances
    wrong_weights = [line for line in generate_lines(20_000, seed=0) if not line.count("i") and not line.count("n")]
    assert compare_to_real(wrong_weights, read_real_lines(REAL, limit=40_000))["variable"] > 0.1


def test_tokenizer_round_trips_and_frames_targets():
    tokenizer = CharTokenizer()
    lines = generate_lines(300, seed=3)
    lefts, rights = [s.split("=")[0] for s in lines], [s.split("=")[1] for s in lines]
    x, y = tokenizer.encode(lefts, 29), tokenizer.encode(rights, 29, bos_eos=True)
    assert [tokenizer.decode(row) for row in x] == lefts and [tokenizer.decode(row) for row in y] == rights
    assert bool((y[:, 0] == BOS).all()) and bool(((y == EOS).sum(1) == 1).all())
    assert y[0].tolist()[: len(rights[0]) + 2][-1] == EOS and int(x.min()) >= 0
    assert tokenizer.vocab_size == len(VOCAB) == 31 and VOCAB[:3] == ["<pad>", "<bos>", "<eos>"]


def test_registered_polynomial_set_has_the_seq2seq_shapes(tmp_path):
    data = load("polynomial:n=500", seed=4)
    assert data.task == "seq2seq" and data.x_train.shape == (400, 29) and data.y_train.shape == (400, 31)
    assert data.info["max_target_len"] == 31 and data.info["vocab"][5] == "*"
    assert {k: data.info[k] for k in ("pad_index", "bos_index", "eos_index", "vocab_size")} == {
        "pad_index": 0, "bos_index": 1, "eos_index": 2, "vocab_size": 31}
    same = load("polynomial:n=500", seed=4)
    assert all(torch.equal(a, b) for a, b in zip(data, same, strict=True))

    lines = generate_lines(30, seed=9)
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    from_file = load(f"polynomial:path={tmp_path / 'train.txt'},n=0,val_fraction=0.1")
    tokenizer = CharTokenizer()
    decoded = sorted(tokenizer.decode(a) + "=" + tokenizer.decode(b) for a, b in zip(
        torch.cat([from_file.x_train, from_file.x_val]), torch.cat([from_file.y_train, from_file.y_val]), strict=True))
    assert decoded == sorted(lines) and from_file.info["real"]


def test_reader_rejects_bad_lines_with_their_line_number(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("(x+1)*(x-1)=x**2-1\n(x+1)/(x-1)=?\n")
    with pytest.raises(UsageError, match=r"train.txt line 2: .*characters '/\?' outside"):
        read_lines(path)
    path.write_text("x**2\n")
    with pytest.raises(UsageError, match="line 1: .*not FACTORS=EXPANSION"):
        read_lines(path)
    path.write_text("(x+1)*(x-1)=x**2-1\n")
    with pytest.raises(UsageError, match="longer than max_len=10"):
        read_lines(path, max_len=10)
    with pytest.raises(UsageError, match="does not exist"):
        read_lines(tmp_path / "absent.txt")


def test_exact_match_on_strings_and_ids():
    assert exact_match(["a", "b", "c", "d"], ["a", "x", "c", "y"]) == 0.5
    target = torch.tensor([[BOS, 5, 6, EOS, 0], [BOS, 7, EOS, 0, 0], [BOS, 8, 9, EOS, 0]])
    predicted = torch.tensor([[5, 6, EOS, 9, 9, 9], [7, 7, EOS, 0, 0, 0], [8, 9, 9, 0, 0, 0]])  # no EOS: wrong
    assert exact_match_ids(predicted, target).tolist() == [True, False, False]
    assert exact_match_ids(target, target).all()


def test_canonical_factored_writes_a_product_as_the_data_write_it():
    assert {text: canonical_factored(text) for text in [
        "(x+1)*(x-2)", "(-5*z-9)*(7-3*z)", "(sin(x)+1)*(sin(x)-2)", "(x+1)*(x+1)", "(x+1)*x", "(-x+5)*(x+1)",
    ]} == {"(x+1)*(x-2)": "(x-2)*(x+1)", "(-5*z-9)*(7-3*z)": "(7-3*z)*(-5*z-9)",
           "(sin(x)+1)*(sin(x)-2)": "(sin(x)-2)*(sin(x)+1)", "(x+1)*(x+1)": "(x+1)**2", "(x+1)*x": "x*(x+1)",
           "(-x+5)*(x+1)": "(5-x)*(x+1)"}
    for other in ["(x+1)*(y-2)", "(x+1)*(x-2)*(x+3)", "hello", "(x+1)", "", "x*()", "-3*x*()", "(x+1)**x-2)",
                  "(x+1)*-x-2)", "(x+1)*(x-2)=x**2-x-2"]:  # not a product the data could hold
        assert canonical_factored(other) == other
    for line in generate_lines(5_000, seed=21):
        factored = line.partition("=")[0]
        assert canonical_factored(factored) == factored  # the data's own lines are already so
        if factored.count(")*(") == 1 and factored.startswith("(") and factored.endswith(")"):
            first, second = factored[1:-1].split(")*(")
            assert canonical_factored(f"({second})*({first})") == factored
