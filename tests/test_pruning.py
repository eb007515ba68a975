"""EL2N pruning policies (sfp_ray.pruning.select and helpers) on hand-computed scores,
and their wiring into the SFPrompt client (pruning.policy, per_class, skip_top, score_at,
refresh_every).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_METHODS, client_task, tiny

from sfp_ray.config import build_config, load_config
from sfp_ray.costs import Ledger
from sfp_ray.errors import ConfigError
from sfp_ray.executors.serial import SerialExecutor
from sfp_ray.preparation import prepare_run
from sfp_ray.pruning import class_quotas, el2n_scores, keep_count, select, select_hardest

# Ten samples of a label-skewed client: six of class 0, three of class 1, one of class 2.
# Scores are EL2N values of three-class softmax outputs, written out by hand:
#   p = (1, 0, 0) with label 0 -> 0;   uniform p -> sqrt(6)/3 = 0.8165;   p = onehot(j != y) -> sqrt(2).
#   The others are chosen values in (0, sqrt 2) to give a strict order.
LABELS = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 2])
SCORES = torch.tensor([0.10, 0.90, 0.30, 1.40, 0.50, 0.20, 1.30, 1.20, 0.05, 1.10])
#  rank (high->low): 3 (1.40), 6 (1.30), 7 (1.20), 9 (1.10), 1 (0.90), 4 (0.50), 2 (0.30), 5 (0.20), 0 (0.10), 8 (0.05)


def ids(t: torch.Tensor) -> list[int]:
    return [int(v) for v in t]


def test_hand_scores_are_el2n_values() -> None:
    third = torch.log(torch.ones(1, 3))
    assert float(el2n_scores(third, torch.tensor([0]))) == pytest.approx(math.sqrt(6) / 3, abs=1e-6)
    assert float(el2n_scores(torch.tensor([[50.0, 0.0, 0.0]]), torch.tensor([0]))) == pytest.approx(0.0, abs=1e-6)
    wrong = float(el2n_scores(torch.tensor([[0.0, 50.0, 0.0]]), torch.tensor([0])))
    assert wrong == pytest.approx(math.sqrt(2), abs=1e-6)


def test_global_policies_at_half() -> None:
    # keep 5 of 10
    assert ids(select(SCORES, LABELS, 0.5, "hardest")) == [1, 3, 6, 7, 9]
    assert ids(select(SCORES, LABELS, 0.5, "easiest")) == [0, 2, 4, 5, 8]
    assert ids(select_hardest(SCORES, 0.5)) == [1, 3, 6, 7, 9]  # the old entry point is the hardest policy
    # label skew shows: "hardest" keeps 2 of 6 class-0 samples but all of classes 1 and 2,
    # "easiest" keeps no class-2 sample at all
    assert torch.bincount(LABELS[select(SCORES, LABELS, 0.5, "hardest")], minlength=3).tolist() == [2, 2, 1]
    assert torch.bincount(LABELS[select(SCORES, LABELS, 0.5, "easiest")], minlength=3).tolist() == [4, 1, 0]


def test_keep_counts_follow_keep_count() -> None:
    for ratio, k in [(0.25, 3), (0.5, 5), (0.75, 8), (1.0, 10)]:
        assert keep_count(10, ratio) == k
        for policy in ("hardest", "easiest", "random"):
            for per_class in (False, True):
                kept = select(SCORES, LABELS, ratio, policy, per_class=per_class, seed=3)
                assert len(kept) == k and ids(kept) == sorted(set(ids(kept)))
    assert ids(select(SCORES, LABELS, 0.25, "hardest")) == [3, 6, 7]
    assert ids(select(SCORES, LABELS, 0.75, "easiest")) == [0, 1, 2, 4, 5, 7, 8, 9]  # drops 3, 6
    assert ids(select(SCORES, LABELS, 1.0, "hardest")) == list(range(10))


def test_class_quotas_largest_remainder() -> None:
    # sizes 6, 3, 1; k = 5: exact shares 3, 1.5, 0.5 -> floors 3, 1, 0; one left, remainders tie
    # (0.5, 0.5): the larger class (1) wins
    assert class_quotas(LABELS, 5) == {0: 3, 1: 2, 2: 0}
    # k = 3: shares 1.8, 0.9, 0.3 -> floors 1, 0, 0; two left: remainders .9 (class 1), .8 (class 0)
    assert class_quotas(LABELS, 3) == {0: 2, 1: 1, 2: 0}
    # k = 8: shares 4.8, 2.4, 0.8 -> floors 4, 2, 0; two left: .8 (class 0, larger), .8 (class 2)
    assert class_quotas(LABELS, 8) == {0: 5, 1: 2, 2: 1}
    assert class_quotas(LABELS, 10) == {0: 6, 1: 3, 2: 1}
    assert class_quotas(LABELS, 0) == {0: 0, 1: 0, 2: 0}
    # equal sizes and equal remainders: the smaller label first
    assert class_quotas(torch.tensor([4, 4, 7, 7]), 1) == {4: 1, 7: 0}
    with pytest.raises(ValueError):
        class_quotas(LABELS, 11)


def test_per_class_policies_keep_the_label_mix() -> None:
    # quotas {0: 3, 1: 2, 2: 0}
    # class 0 = positions 0..5 with scores .10 .90 .30 1.40 .50 .20 -> hardest 3, 1, 4; easiest 0, 5, 2
    # class 1 = positions 6, 7, 8 with scores 1.30 1.20 .05         -> hardest 6, 7; easiest 8, 7
    assert ids(select(SCORES, LABELS, 0.5, "hardest", per_class=True)) == [1, 3, 4, 6, 7]
    assert ids(select(SCORES, LABELS, 0.5, "easiest", per_class=True)) == [0, 2, 5, 7, 8]
    for policy in ("hardest", "easiest", "random"):
        kept = select(SCORES, LABELS, 0.5, policy, per_class=True, seed=5)
        assert torch.bincount(LABELS[kept], minlength=3).tolist() == [3, 2, 0]
    # 0.75 -> k = 8, quotas {0: 5, 1: 2, 2: 1}
    assert ids(select(SCORES, LABELS, 0.75, "hardest", per_class=True)) == [1, 2, 3, 4, 5, 6, 7, 9]
    with pytest.raises(ValueError, match="labels"):
        select(SCORES, None, 0.5, "hardest", per_class=True)


def test_skip_top_sets_aside_the_highest_scores() -> None:
    # floor(0.2 * 10) = 2: positions 3 (1.40) and 6 (1.30) set aside; hardest of the rest: 7, 9, 1, 4, 2
    assert ids(select(SCORES, LABELS, 0.5, "hardest", skip_top=0.2)) == [1, 2, 4, 7, 9]
    # easiest never reaches the top at 0.5: unchanged
    assert ids(select(SCORES, LABELS, 0.5, "easiest", skip_top=0.2)) == [0, 2, 4, 5, 8]
    # at 0.75 (k = 8) only n - k = 2 can be set aside, whatever skip_top asks
    assert ids(select(SCORES, LABELS, 0.75, "hardest", skip_top=0.5)) == [0, 1, 2, 4, 5, 7, 8, 9]
    # random never draws a set-aside sample
    for seed in range(20):
        kept = ids(select(SCORES, LABELS, 0.5, "random", skip_top=0.2, seed=seed))
        assert 3 not in kept and 6 not in kept
    # per class: class 0 (n=6) sets aside floor(1.2) = 1 -> position 3; class 1 (n=3) floor(.6) = 0
    # -> class 0 keeps 1 (.90), 4 (.50), 2 (.30); class 1 keeps 6, 7
    assert ids(select(SCORES, LABELS, 0.5, "hardest", per_class=True, skip_top=0.2)) == [1, 2, 4, 6, 7]
    with pytest.raises(ValueError, match="skip_top"):
        select(SCORES, LABELS, 0.5, "hardest", skip_top=1.0)


def test_ties_keep_lower_indices() -> None:
    s = torch.tensor([0.5, 0.5, 0.5, 0.5])
    assert ids(select(s, None, 0.5, "hardest")) == [0, 1]
    assert ids(select(s, None, 0.5, "easiest")) == [0, 1]


def test_random_is_seeded_and_ignores_scores() -> None:
    a = select(SCORES, LABELS, 0.5, "random", seed=7)
    assert ids(a) == ids(select(SCORES, LABELS, 0.5, "random", seed=7))
    assert ids(a) == ids(select(-SCORES, LABELS, 0.5, "random", seed=7))  # the scores' order does not matter
    draws = {tuple(ids(select(SCORES, LABELS, 0.5, "random", seed=s))) for s in range(30)}
    assert len(draws) > 10


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="pruning.policy"):
        select(SCORES, LABELS, 0.5, "median")


# ----------------------------------------------------------------------------- configuration


def test_pruning_keys_are_validated() -> None:
    cfg = build_config({}, ["pruning.policy=easiest", "pruning.per_class=true", "pruning.skip_top=0.1",
                            "pruning.score_at=local_update", "pruning.refresh_every=3"])
    p = cfg.pruning
    assert (p.policy, p.per_class, p.skip_top, p.score_at, p.refresh_every) == (
        "easiest", True, 0.1, "local_update", 3)
    p0 = build_config().pruning
    assert (p0.policy, p0.per_class, p0.scope) == ("easiest", True, "split")  # the default, from benchmarks/pruning.py
    for bad in ("pruning.policy=middle", "pruning.skip_top=1", "pruning.refresh_every=-1",
                "pruning.score_at=never"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            build_config({}, [bad])


# ----------------------------------------------------------------------------- client wiring


def start(**overrides):
    literal = {"pruning.policy": "hardest", "pruning.per_class": False, "pruning.scope": "all"}  # the paper's reading
    changes = [f"{k}={v}" for k, v in {**literal, **overrides}.items()]
    spec = prepare_run(load_config(overrides=tiny(*changes, base=TINY_METHODS)), "sfprompt")
    ex = SerialExecutor()
    init = ex.start(spec).state
    return spec, ex, init, client_task


def client_scores(spec, ex, state, cid: int, rnd: int) -> tuple[torch.Tensor, object]:
    """The EL2N scores the client computes from ``state`` (as phase 1a does)."""
    data = spec.train.subset(spec.client_indices[cid])
    ex.ws.load_state(state.tensors())
    return ex.role.score(data, Ledger(rnd, cid, None)), data


@pytest.mark.parametrize("policy, per_class", [("easiest", False), ("hardest", True), ("random", False),
                                               ("easiest", True)])
def test_client_selects_by_policy(policy: str, per_class: bool) -> None:
    spec, ex, init, task = start(**{"pruning.policy": policy, "pruning.per_class": per_class,
                                    "pruning.keep_ratio": 0.25})
    out = ex.run_clients([task(0, 1, 11, spec.client_indices[0])], init)[0]
    scores, data = client_scores(spec, ex, init, 0, 1)
    expected = select(scores, data.labels, 0.25, policy, per_class=per_class, seed=11)
    assert out.client_state["kept"].tolist() == expected.tolist()
    assert len(expected) == keep_count(len(data), 0.25)
    assert sum(c.samples for c in out.costs if c.phase == "split_train") == len(expected)


def test_score_after_local_update() -> None:
    spec, ex, init, task = start(**{"pruning.score_at": "local_update", "pruning.keep_ratio": 0.5})
    out = ex.run_clients([task(0, 1, 11, spec.client_indices[0])], init)[0]
    samples = {c.phase: c.samples for c in out.costs if c.samples}
    n = len(spec.client_indices[0])
    # the local update sees all samples, split training the kept half; scoring comes after the update
    assert samples["local_update"] == n and samples["split_train"] == keep_count(n, 0.5)
    # a round without re-scoring trains the local update on the kept samples only
    out2 = ex.run_clients([task(0, 2, 12, spec.client_indices[0], out.client_state)], out.state)[0]
    samples2 = {c.phase: c.samples for c in out2.costs if c.samples}
    assert "prune" not in samples2 and samples2["local_update"] == keep_count(n, 0.5)


def test_scores_after_local_update_differ_from_download_scores() -> None:
    """Scored after 1b, the kept set follows the locally updated tail, not the downloaded one."""
    spec, ex, init, task = start(**{"pruning.score_at": "local_update", "pruning.keep_ratio": 0.5,
                                    "train.lr": 0.05, "train.local_epochs": 3})
    out = ex.run_clients([task(0, 1, 11, spec.client_indices[0])], init)[0]
    at_download, _ = client_scores(spec, ex, init, 0, 1)
    assert out.client_state["kept"].tolist() != select_hardest(at_download, 0.5).tolist()


def test_refresh_every_rescores_after_k_rounds() -> None:
    spec, ex, init, task = start(**{"pruning.refresh_every": 2, "pruning.keep_ratio": 0.5})
    idx = spec.client_indices[0]
    out = ex.run_clients([task(0, 1, 11, idx)], init)[0]
    out2 = ex.run_clients([task(0, 2, 12, idx, out.client_state)], out.state)[0]
    assert "prune" not in {c.phase for c in out2.costs}  # one round since scoring: no refresh
    assert out2.client_state["pruned_at_round"] == 1
    out3 = ex.run_clients([task(0, 3, 13, idx, out2.client_state)], out2.state)[0]
    assert "prune" in {c.phase for c in out3.costs} and out3.client_state["pruned_at_round"] == 3
    scores, _ = client_scores(spec, ex, out2.state, 0, 3)
    assert out3.client_state["kept"].tolist() == select_hardest(scores, 0.5).tolist()


def test_scope_split_prunes_only_split_training() -> None:
    spec, ex, init, task = start(**{"pruning.scope": "split", "pruning.keep_ratio": 0.25})
    idx = spec.client_indices[0]
    n = len(idx)
    out = ex.run_clients([task(0, 1, 11, idx)], init)[0]
    samples = {c.phase: c.samples for c in out.costs if c.samples}
    assert samples["local_update"] == n and samples["split_train"] == keep_count(n, 0.25)
    out2 = ex.run_clients([task(0, 2, 12, idx, out.client_state)], out.state)[0]
    samples2 = {c.phase: c.samples for c in out2.costs if c.samples}
    assert "prune" not in samples2 and samples2["local_update"] == n


@pytest.mark.parametrize("overrides", [{"pruning.scope": "split"}, {"pruning.score_at": "local_update"},
                                       {"pruning.every_round": True}])
def test_projection_follows_the_pruning_options(overrides) -> None:
    """One executed round (every client scores in round 1) matches the first-round projection."""
    from sfp_ray.projection import project_method

    spec, ex, init, task = start(**{"pruning.keep_ratio": 0.5, **overrides})
    cfg = spec.cfg
    out = ex.run_clients([task(0, 1, 11, spec.client_indices[0])], init)[0]
    executed = sum(c.flops for c in out.costs if c.side == "client")
    assert len(spec.client_indices[0]) == cfg.data.samples_per_client
    row = project_method(cfg, "sfprompt")
    assert executed == pytest.approx(row["client_flops_first_round"], rel=0.01)
