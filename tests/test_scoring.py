"""Tabular scoring in batches: how rows are cut, and that the batches' threads give the same
scores as one pass, in this process and in a forked child."""

from __future__ import annotations

import functools
import math
import os
import threading
import time

import numpy as np
import pytest
import torch

from anomaly_vae.data.preprocessing import EncodedTable
from anomaly_vae.models.tabular_vae import TabularVAE
from anomaly_vae.scoring import (
    ARGMAX_VECTORISES_FROM,
    _directions,
    _largest_columns,
    _rows_per_batch,
    score_tabular,
    typical_terms,
)


@pytest.mark.parametrize("n", [1, 300, 4096, 4097, 10_000, 100_003])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_batches_are_equal_and_keep_every_worker_busy(n: int, workers: int) -> None:
    batch_size = 4096
    rows = _rows_per_batch(n, batch_size, workers)
    batches = math.ceil(n / rows)
    assert rows <= batch_size
    # Equal but for the last, which is short by less than one row per batch.
    assert n - (batches - 1) * rows > rows - batches
    assert batches == 1 if n <= batch_size else batches % workers == 0


@pytest.mark.parametrize(
    "width", [1, 2, 5, 30, ARGMAX_VECTORISES_FROM - 1, ARGMAX_VECTORISES_FROM, 100]
)
def test_top_columns_rank_as_a_stable_sort_down_columns_or_along_rows(width: int) -> None:
    """Both ways of ranking (narrow rows down the columns, wide ones along the rows) give the
    columns of a stable descending sort: equal terms (whole numbers, zeros of either sign) in
    the order of their columns."""
    rng = np.random.default_rng(width)
    terms = rng.normal(size=(500, width)).astype(np.float32)
    terms[:200] = terms[:200].round()
    terms[200:250] = 0.0
    terms[250:300, ::2] = -0.0
    terms[300:350] = np.inf
    k = min(3, width)
    expected = np.argsort(-terms, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(_largest_columns(terms.copy(), k), expected)


@pytest.fixture
def rows() -> tuple[TabularVAE, EncodedTable]:
    torch.manual_seed(0)
    model = TabularVAE(n_numeric=5, n_indicators=0, category_sizes=[3], hidden=[16], latent=2)
    numeric = np.random.default_rng(0).normal(size=(3000, 5)).astype(np.float32)
    codes = np.random.default_rng(1).integers(0, 3, size=(3000, 1))
    return model.eval(), EncodedTable(numeric, np.ones_like(numeric), codes)


def torch_threads(request: pytest.FixtureRequest, threads: int) -> None:
    """`threads` intra-op torch threads, so as many scoring workers, on any machine; the count
    is put back after the test. Faked (a patched torch.get_num_threads), the count also
    reached the scoring threads as they started, which then ran on as many torch threads."""
    request.addfinalizer(functools.partial(torch.set_num_threads, torch.get_num_threads()))
    torch.set_num_threads(threads)


def test_parallel_batches_score_as_one_pass(rows, request) -> None:
    torch_threads(request, 3)
    batched = score_tabular(*rows, batch_size=700, top_k=3)
    whole = score_tabular(*rows, batch_size=len(rows[1]), top_k=3)
    np.testing.assert_allclose(batched.recon, whole.recon, rtol=1e-5)
    np.testing.assert_allclose(batched.kl, whole.kl, rtol=1e-5)
    np.testing.assert_array_equal(batched.top_features, whole.top_features)
    np.testing.assert_array_equal(batched.top_directions, whole.top_directions)


def test_top_directions_say_whether_a_number_lies_above_or_below_the_expected_value() -> None:
    """Numbers only (columns 0 and 1 here), and only where the value was there: a missing
    cell's imputed value says nothing."""
    ranked = np.array([[0, 1, 2], [2, 1, 0], [1, 0, 2]])
    values = np.array([[1.0, -1.0], [1.0, -1.0], [0.5, 0.5]], np.float32)
    expected = np.array([[0.0, 0.0], [2.0, -3.0], [0.0, 0.5]], np.float32)
    observed = np.array([[1, 1], [1, 0], [1, 1]], np.float32)
    directions = _directions(ranked, 2, values, expected, observed)
    np.testing.assert_array_equal(directions, [[1, -1, 0], [0, 0, -1], [0, 1, 0]])
    everywhere = _directions(ranked, 2, values, expected, None)  # no cell can be missing
    np.testing.assert_array_equal(everywhere, [[1, -1, 0], [0, 1, -1], [0, 1, 0]])
    none = np.empty((3, 0), np.float32)  # a table of categorical columns only
    np.testing.assert_array_equal(_directions(ranked, 0, none, none, none), np.zeros((3, 3)))


def test_top_features_rank_the_terms_above_each_features_typical_value(rows, request) -> None:
    """Ranked with `typical`, the columns are those of the kept terms less `typical`, on the
    caller's threads and on the batch threads alike; a column typically far above its best
    (one the model cannot predict) leaves the top for the rows where it is only as usual."""
    torch_threads(request, 3)
    kept = score_tabular(*rows, batch_size=700, keep_terms=True)
    typical = np.median(kept.terms, axis=0).astype(np.float32)
    for batch_size in (700, len(rows[1])):
        ranked = score_tabular(*rows, batch_size=batch_size, top_k=3, typical=typical)
        np.testing.assert_array_equal(
            ranked.top_features, _largest_columns(kept.terms - typical, 3)
        )
        np.testing.assert_array_equal(ranked.recon, kept.recon)  # the scores do not move
    raised = typical.copy()
    raised[5] += 1e6  # the categorical column
    assert (score_tabular(*rows, top_k=5, typical=raised).top_features[:, :5] != 5).all()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_scores_with_threads_of_its_own(rows, request) -> None:
    """The parent's scoring threads do not exist in a child forked after them."""
    torch_threads(request, 2)
    expected = score_tabular(*rows, batch_size=700).score  # starts the parent's threads
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if it scores, and scores the same
        same = np.array_equal(score_tabular(*rows, batch_size=700).score, expected)
        os._exit(0 if same else 1)
    deadline = time.monotonic() + 30
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child never finished scoring")
    assert os.waitstatus_to_exitcode(done[1]) == 0


def test_rows_encoded_batch_by_batch_score_as_rows_encoded_first(request) -> None:
    """Checked rows are encoded on the scoring threads, batch by batch: the same model inputs
    as encoding the whole table first, for numeric (with missing values), binary and
    categorical columns."""
    import pandas as pd

    from anomaly_vae.data.preprocessing import TabularPreprocessor
    from anomaly_vae.detector import build_tabular_model

    rng = np.random.default_rng(0)
    n = 3000
    frame = pd.DataFrame(
        {
            "amount": rng.lognormal(3, 2, n),  # a heavy tail: some cells are compressed
            "balance": np.where(rng.random(n) < 0.1, np.nan, rng.normal(100, 10, n)),
            "online": rng.integers(0, 2, n).astype(float),
            "merchant": rng.choice(["grocery", "fuel", "travel"], n),
        }
    )
    pre = TabularPreprocessor.fit(frame, list(frame.columns), categorical=None)
    assert pre.binary and pre.categorical and pre.missing_columns
    torch.manual_seed(0)
    params = {"hidden": [16], "latent": 2, "likelihood": "gaussian", "dropout": 0.0}
    model = build_tabular_model(pre, params).eval()
    scored = frame.assign(online=np.where(np.arange(n) == 5, 3.0, frame["online"]))  # unseen
    torch_threads(request, 3)
    first = score_tabular(model, pre.transform(scored, "t"), batch_size=700, top_k=3)
    by_batch = score_tabular(model, pre.check(scored, "t"), batch_size=700, top_k=3)
    np.testing.assert_array_equal(by_batch.recon, first.recon)
    np.testing.assert_array_equal(by_batch.kl, first.kl)
    np.testing.assert_array_equal(by_batch.top_features, first.top_features)
    assert np.isfinite(first.score).all()


def test_scoring_leaves_the_torch_threads_that_new_threads_take(rows, request) -> None:
    """Scoring on parallel threads lowered torch's thread count to one for its span, and with
    it the count a thread takes when it first uses torch: a server's new request thread that
    did so meanwhile kept one thread for good. The scoring threads still run one each."""
    torch_threads(request, 2)
    model, table = rows
    new_thread, scoring_thread = [], []

    class Rows:
        """The rows, and the torch threads of a new thread started while they score."""

        def __len__(self) -> int:
            return len(table)

        def rows(self, part: slice) -> EncodedTable:
            started = threading.Thread(target=lambda: new_thread.append(torch.get_num_threads()))
            started.start()
            started.join()
            scoring_thread.append(torch.get_num_threads())
            return table.rows(part)

    score_tabular(model, Rows(), batch_size=700)
    assert new_thread == [2] * len(new_thread) and len(new_thread) > 1
    assert scoring_thread == [1] * len(scoring_thread)
    assert torch.get_num_threads() == 2


def test_typical_terms_are_medians_over_the_cells_observed() -> None:
    # Counted as 0, the missing cells of a mostly missing column pulled its median to 0.
    terms = np.array([[4.0, 1.0, 7.0], [0.0, 3.0, 8.0], [0.0, 0.0, 9.0]], np.float32)
    observed = np.array([[1, 1], [0, 1], [0, 0]], np.float32)  # the two dense columns
    assert typical_terms(terms, observed).tolist() == [4.0, 2.0, 8.0]
    assert typical_terms(terms, np.zeros_like(observed)).tolist() == [0.0, 0.0, 8.0]
