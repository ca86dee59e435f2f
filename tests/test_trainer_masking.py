import numpy as np
import pytest

from prism4m.trainer.masking import (
    UnifiedMasker,
    all2all,
    allocate_budget,
    dirichlet_expectation,
    mixture_4m7,
    mixture_4m21,
    sample_dirichlet,
    span_mask,
)
from prism4m.tokenizers.text import EOS_ID
from prism4m.trainer.modalities import build_registry

NAMES = ["tok_rgb@224", "tok_depth@224", "tok_semseg@224", "caption", "det"]


def small_registry():
    overrides = {
        "tok_rgb@224": {"num_tokens": 16, "grid": (4, 4)},
        "tok_depth@224": {"num_tokens": 16, "grid": (4, 4)},
        "tok_semseg@224": {"num_tokens": 16, "grid": (4, 4)},
        "caption": {"num_tokens": 20},
        "det": {"num_tokens": 8},
    }
    return build_registry(NAMES, overrides=overrides)


@pytest.mark.parametrize("mixture", [mixture_4m7, mixture_4m21])
def test_budgets_sum_to_requested_totals_and_respect_max_tokens(mixture):
    registry = small_registry()
    sizes = np.array([s.num_tokens for s in registry.values()])
    masker = UnifiedMasker(registry, mixture(NAMES), num_input_tokens=40, num_target_tokens=30)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        _, b_in, b_tg = masker.sample_budgets(rng)
        assert b_in.sum() == 40 and b_tg.sum() == 30
        assert (b_in >= 0).all() and (b_tg >= 0).all()
        assert (b_in <= sizes).all()
        is_img = np.array([not s.is_sequence for s in registry.values()])
        # image tokens used as inputs cannot also be targets
        assert (b_in[is_img] + b_tg[is_img] <= sizes[is_img]).all()
        assert (b_tg[~is_img] <= sizes[~is_img]).all()


def test_budget_is_capped_by_what_the_sample_holds():
    rng = np.random.default_rng(1)
    for _ in range(500):
        budget = allocate_budget(rng, np.array([0.5, 0.5, 1000.0]), 50, np.array([30, 0, 10]))
        assert budget.tolist() in ([30, 0, 10],)  # 40 available < 50 requested
        budget = allocate_budget(rng, np.array([0.01, 0.01, 0.01]), 25, np.array([10, 10, 10]))
        assert budget.sum() == 25 and budget.max() <= 10


def test_tiny_alphas_give_valid_dirichlet_draws():
    rng = np.random.default_rng(2)
    for _ in range(200):
        p = sample_dirichlet(rng, np.array([0.01, 0.01, 0.01, 0.0]))
        assert np.isfinite(p).all() and p[3] == 0 and np.isclose(p.sum(), 1.0)


def test_budget_means_match_dirichlet_expectation():
    registry = build_registry(["tok_rgb@224", "tok_depth@224", "caption"], overrides={"caption": {"num_tokens": 256}})
    names = list(registry)
    comps = [all2all(names, 0.5), all2all(names, 2.0)]
    comps[1] = type(comps[1])({"tok_rgb@224": 3.0, "tok_depth@224": 1.0, "caption": 1.0}, comps[1].target_alphas)
    masker = UnifiedMasker(registry, comps, 64, 64)
    rng = np.random.default_rng(3)
    draws = np.array([masker.sample_budgets(rng)[1] for _ in range(4000)])
    expected = dirichlet_expectation(comps, names, 64, "input")
    assert np.abs(draws.mean(0) - expected).max() / expected.max() < 0.05


def test_masked_sample_splits_image_tokens_between_input_and_target():
    registry = small_registry()
    masker = UnifiedMasker(registry, mixture_4m7(NAMES), 40, 30)
    rng = np.random.default_rng(4)
    sample = {n: np.arange(16) + 100 for n in NAMES[:3]}
    sample["caption"] = np.array([300, 301, 302, 303, 304, EOS_ID])
    sample["det"] = None  # invalid record: no budget goes there
    for _ in range(200):
        out = masker(sample, rng)
        for name in NAMES[:3]:
            assert not (out[name]["input_mask"] & out[name]["target_mask"]).any()
            np.testing.assert_array_equal(out[name]["labels"], sample[name])
        assert not out["det"]["input_mask"].any() and not out["det"]["target_mask"].any()
        used_in = sum(int(out[n]["input_mask"].sum()) for n in NAMES)
        assert used_in <= 40


def test_span_mask_uses_sentinels_from_s1_and_reconstructs_the_sequence():
    rng = np.random.default_rng(5)
    tokens = list(range(300, 330)) + [EOS_ID]
    for _ in range(300):
        enc, tgt = span_mask(tokens, input_budget=12, target_budget=200, rng=rng)
        assert len(enc) <= 12
        sentinels = [t for t in enc if 4 <= t < 204]
        assert sentinels == list(range(5, 5 + len(sentinels)))  # [S_1], [S_2], ...
        # Fill each sentinel with its span from the target: the original comes back.
        spans, current = {}, None
        for t in tgt:
            if 4 <= t < 204:
                current = t
                spans[current] = []
            else:
                spans[current].append(t)
        rebuilt = [x for t in enc for x in (spans[t] if t in spans else [t])]
        assert rebuilt == tokens


def test_span_mask_respects_target_budget_and_zero_input_budget():
    rng = np.random.default_rng(6)
    tokens = list(range(300, 340))
    for _ in range(100):
        enc, tgt = span_mask(tokens, input_budget=0, target_budget=7, rng=rng)
        assert enc == [] and len(tgt) == 7 and tgt[0] == 5
        enc, tgt = span_mask(tokens, input_budget=30, target_budget=5, rng=rng)
        assert len(enc) <= 30 and len(tgt) <= 5


def test_keep_all_puts_the_whole_caption_in_the_input_when_it_fits():
    rng = np.random.default_rng(7)
    enc, tgt = span_mask([300, 301, 302, EOS_ID], input_budget=10, target_budget=10, rng=rng, keep="all")
    assert enc == [300, 301, 302, EOS_ID] and tgt == []
