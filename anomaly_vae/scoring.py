"""Anomaly scores, defined once for training, calibration, scoring and evaluation.

For a sample x with posterior q(z|x) = N(mu, diag(sigma^2)):

- reconstruction score: -log p(x | z), summed over features, at z = mu (or averaged over L
  draws of z with a fixed seed), so the same input always gets the same score;
- KL score: KL(q(z|x) || N(0, I));
- score: their sum, the negative ELBO at z = mu.

Training minimises the batch mean of recon + beta * KL over sampled z, through the same
per-feature terms. For images the features are pixels, and the per-pixel terms above their
best possible value, smoothed, are the anomaly map that shows where an image looks wrong.

An image's reconstruction score also subtracts its input complexity, `image.complexity_weight`
nats per bit that zlib needs to store its 8-bit pixels (Serra et al., "Input complexity and
out-of-distribution detection with likelihood-based generative models", ICLR 2020). A
likelihood model finds simple images easy to explain whatever they show: a model of eights
reconstructs a thin one well. Credit for an image's own complexity removes that bias (one-class
MNIST, mean AUROC over the ten digits 0.962 -> 0.978, benchmarks/results/image-tuning.md).
"""

from __future__ import annotations

import math
import os
import threading
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import NamedTuple

import numpy as np
import torch

from anomaly_vae.data.preprocessing import TabularRows
from anomaly_vae.models.conv_vae import ConvVAE
from anomaly_vae.models.losses import (
    HALF_LOG_2PI,
    bernoulli_nll,
    binary_nll,
    categorical_nll,
    gaussian_nll,
    kl_divergence,
    reparameterize,
)
from anomaly_vae.models.tabular_vae import TabularVAE

SCORE_COLUMNS = ("recon_score", "kl_score", "score")
SAMPLING_SEED = 0


@dataclass
class SampleScores:
    recon: np.ndarray
    kl: np.ndarray
    # The columns of each sample's largest reconstruction terms above their typical value on
    # normal rows (`score_tabular`'s `typical`; else above their best possible value, 0 for a
    # perfect reconstruction), largest first: the features that made it anomalous, (n, k) for
    # `score_tabular`'s `top_k`.
    top_features: np.ndarray | None = None
    # Where each of them is a number, whether its value lies above (1) or below (-1) what the
    # decoder expected for the row; 0 for other columns and missing cells. (n, k), int8.
    top_directions: np.ndarray | None = None
    # Each sample's reconstruction terms as `top_features` ranks them, (n, n_features), for
    # `score_tabular`'s `keep_terms`: training takes their medians (without `typical`) for it.
    terms: np.ndarray | None = None
    # Images: per-pixel anomaly maps (n, size, size), the smoothed pixel terms above their best.
    maps: np.ndarray | None = None

    @property
    def score(self) -> np.ndarray:
        return self.recon + self.kl


class TabularTerms(NamedTuple):
    nll: torch.Tensor  # per-feature reconstruction NLL, (n, n_features)
    kl: torch.Tensor  # (n,)
    # What the decoder expected of the numeric inputs (their means) and binary ones (their
    # logits), (n, n_numeric + n_binary); averaged over the draws for `samples > 0`.
    expected: torch.Tensor


def tabular_terms(
    model: TabularVAE,
    numeric: torch.Tensor,
    observed: torch.Tensor,
    codes: torch.Tensor,
    samples: int = 0,
    generator: torch.Generator | None = None,
) -> TabularTerms:
    """Per-feature reconstruction NLL and KL, with the decoder's expected values.

    `samples=0` decodes z = mu; `samples=L` averages the NLL (and the expected values) over L
    reparameterized draws (training uses L = 1 with a fresh draw each step).
    """
    mu, log_var = model.encode(numeric, observed, codes)
    kl = kl_divergence(mu, log_var)
    if samples == 0:
        # One draw: stacking and averaging it would copy the (n, n_features) terms twice.
        nll, expected = _feature_nll(model, mu, numeric, observed, codes)
        return TabularTerms(nll, kl, expected)
    draws = [
        _feature_nll(model, reparameterize(mu, log_var, generator), numeric, observed, codes)
        for _ in range(samples)
    ]
    nll, expected = (
        terms[0] if samples == 1 else torch.stack(terms).mean(0)
        for terms in zip(*draws, strict=True)
    )
    return TabularTerms(nll, kl, expected)


def _feature_nll(
    model: TabularVAE,
    z: torch.Tensor,
    numeric: torch.Tensor,
    observed: torch.Tensor,
    codes: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-feature NLL of the inputs decoded from `z`, and the decoded numeric means."""
    numeric_mean, logits = model.decode(z)
    n = model.n_numeric
    terms = gaussian_nll(numeric[:, :n], numeric_mean[:, :n], model.bounded_log_scale())
    if model.n_binary:
        binary = binary_nll(numeric[:, n:], numeric_mean[:, n:], model.unseen_nll)
        terms = torch.cat([terms, binary], 1)
    # Imputed cells carry no information about the row; they do not count. Only columns with
    # indicator inputs can have them (elsewhere a missing value is an input error), so a table
    # without any skips a pass over its terms.
    if len(model.indicator_columns):
        terms = terms * observed
    if not model.category_sizes:
        return terms, numeric_mean
    return torch.cat([terms, categorical_nll(codes, logits)], dim=1), numeric_mean


# Rows per forward pass: small enough that a batch's activations stay in the core's cache. At
# 16384 rows the 128-wide layers spill (8 MiB each) and a row cost 1.6x as much on one thread
# as at 4096; `score` on 2M 30-column rows took 10% less time and memory. Larger inputs are cut
# into equal batches, as many as a multiple of the cores, so that no core waits for another's
# remainder (two cores, 10,000 24_mnist rows: 4,096 + 4,096 + 1,808 took 8.6 ms, four of 2,500
# 7.1 ms). Smaller inputs are one batch on torch's own threads: Python threads contend for the
# GIL between the many short operations of small batches (two cores, one batch against two on
# Python threads: 6_cardio's 673 test rows 0.46 against 0.78 ms, 38_thyroid's 1,197 0.59
# against 0.93, 24_mnist's 2,771 1.79 against 2.07).
SCORING_BATCH_ROWS = 4096


def score_tabular(
    model: TabularVAE,
    table: TabularRows,
    samples: int = 0,
    batch_size: int = SCORING_BATCH_ROWS,
    top_k: int = 0,
    typical: np.ndarray | None = None,
    keep_terms: bool = False,
) -> SampleScores:
    """Scores for rows, in batches to bound memory; `CheckedRows` are encoded batch by batch
    on the thread that scores them.

    Several batches run on parallel Python threads with one torch thread each: torch's own
    threads wait for each other after every operation, and on two shared, busy cores that made
    scoring up to 10x slower than one thread. Batches that run one after another, a single
    one or sampled scores (`samples > 0`, drawn from one seeded generator, in order), use the
    caller's torch threads. `top_k` ranks each row's features by their reconstruction term
    (`SampleScores.top_features`), on the scoring threads beside the network: ranked on the
    caller's thread afterwards, they cost `score` a third of its time.

    `typical` holds each feature's median term above its best on normal rows: ranked by their
    raw terms, the columns a model cannot predict (a category drawn at random, a job among
    twelve) topped most rows, normal or not, and hid the column that was off.
    """
    if model.training:  # eval() walks every submodule, a cost on small batches
        model.eval()
    workers = 1 if samples else torch.get_num_threads()
    n = len(table)
    rows_per_batch = _rows_per_batch(n, batch_size, workers)
    n_features = model.n_numeric + model.n_binary + len(model.category_sizes)
    top_k = min(top_k, n_features)
    scores = SampleScores(
        recon=np.empty(n),
        kl=np.empty(n),
        top_features=np.empty((n, top_k), np.int32) if top_k else None,
        top_directions=np.empty((n, top_k), np.int8) if top_k else None,
        terms=np.empty((n, n_features), np.float32) if keep_terms else None,
    )
    generator = torch.Generator().manual_seed(SAMPLING_SEED) if samples else None
    # What each term is compared with: the smallest value a numeric term can take (a perfect
    # reconstruction; binary and categorical terms are 0 at their best already), plus the
    # feature's typical excess over it. Numeric and binary cells that were missing have no
    # term (0), and are compared with nothing.
    dense = model.n_numeric + model.n_binary
    dense_base = category_base = None
    if top_k or keep_terms:
        dense_base = model.bounded_log_scale().detach() + HALF_LOG_2PI
        if typical is not None:
            dense_base = torch.cat([dense_base, torch.zeros(model.n_binary)])
            dense_base += torch.from_numpy(typical[:dense])
            category_base = torch.from_numpy(typical[dense:])

    @torch.inference_mode()
    def score_rows(start: int) -> None:
        rows = slice(start, start + rows_per_batch)
        batch = table.rows(rows)
        observed_rows = torch.from_numpy(batch.observed)
        nll, kl, expected = tabular_terms(
            model,
            torch.from_numpy(batch.numeric),
            observed_rows,
            torch.from_numpy(batch.codes),
            samples=samples,
            generator=generator,
        )
        scores.recon[rows] = nll.sum(1).numpy()
        scores.kl[rows] = kl.numpy()
        if dense_base is not None:
            # nll - base * observed, in place: the scores above already summed nll.
            width = len(dense_base)
            nll[:, :width].addcmul_(observed_rows[:, :width], dense_base, value=-1)
            if category_base is not None and len(category_base):
                nll[:, dense:] -= category_base
            if scores.terms is not None:
                scores.terms[rows] = nll.numpy()
            if top_k:
                ranked = _largest_columns(nll.numpy(), top_k)
                scores.top_features[rows] = ranked
                observed = batch.observed if len(model.indicator_columns) else None
                scores.top_directions[rows] = _directions(
                    ranked, model.n_numeric, batch.numeric, expected.numpy(), observed
                )

    starts = range(0, n, rows_per_batch)
    if workers > 1 and len(starts) > 1:
        list(_scoring_pool(workers).map(score_rows, starts))
    else:
        for start in starts:
            score_rows(start)
    return scores


def _directions(
    ranked: np.ndarray,
    n_numeric: int,
    values: np.ndarray,
    expected: np.ndarray,
    observed: np.ndarray | None,
) -> np.ndarray:
    """`SampleScores.top_directions` of the ranked columns: the sign of each numeric value
    less the decoder's expectation (both scaled, which keeps their order), 0 for columns that
    are not numbers and for missing cells (`observed` 0; None where none can be missing),
    whose imputed values say nothing."""
    if n_numeric == 0:  # a table without number columns, whose values are (n, 0)
        return np.zeros(ranked.shape, np.int8)
    rows = np.arange(len(ranked))[:, None]
    columns = np.minimum(ranked, n_numeric - 1)
    signs = np.sign(values[rows, columns] - expected[rows, columns]).astype(np.int8)
    present = ranked < n_numeric
    if observed is not None:
        present &= observed[rows, columns] > 0
    return signs * present


def typical_terms(terms: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Each feature's median term (`SampleScores.terms` of normal rows) over the rows where
    it was observed, for `score_tabular`'s `typical`: counted as 0, the missing cells of a
    mostly missing column would hide how far its values usually are from their best."""
    dense = observed.shape[1]
    present = terms.astype(np.float64)
    present[:, :dense][observed == 0] = np.nan
    with warnings.catch_warnings():  # a column missing on every row: no median, 0
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nan_to_num(np.nanmedian(present, axis=0)).astype(np.float32)


# Row width from which NumPy's argmax along rows vectorises (`_largest_columns`).
ARGMAX_VECTORISES_FROM = 64


def _largest_columns(terms: np.ndarray, k: int) -> np.ndarray:
    """The columns of each row's `k` largest terms, largest first, the first of equal terms
    first (as a stable sort); `terms` may be overwritten. k passes that each find every row's
    largest term and mask it cost less than a sort or partition per row.

    NumPy's argmax along rows runs a loop per row, 2 ns a value on rows of 30 (4,096 rows,
    one core: 0.92 ms for the top 3, a fifth of scoring the batch), and vectorises only from
    64 values on. Narrower rows are ranked down the columns of a transposed copy instead, where
    each pass is a max, a comparison and a max of small integers over whole rows of the copy:
    0.31 ms for 30 columns, 0.13 for 8, 0.56 for 56.
    """
    n, m = terms.shape
    ranked = np.empty((n, k), np.int32)
    rows = np.arange(n)
    if m >= ARGMAX_VECTORISES_FROM:
        for j in range(k):
            ranked[:, j] = best = terms.argmax(axis=1)
            terms[rows, best] = -np.inf
        return ranked
    columns = np.ascontiguousarray(terms.T)
    reversed_index = np.arange(m, 0, -1, dtype=np.uint8)[:, None]  # m - column: first is largest
    largest = np.empty_like(columns, dtype=bool)
    for j in range(k):
        np.equal(columns, columns.max(axis=0), out=largest)
        ranked[:, j] = best = m - (largest * reversed_index).max(axis=0)
        columns[best, rows] = -np.inf
    return ranked


def _rows_per_batch(n: int, batch_size: int, workers: int) -> int:
    """One batch up to `batch_size` rows; past it, equal batches of at most `batch_size`
    rows, as many as a multiple of `workers`."""
    if n <= batch_size:
        return max(1, n)
    batches = math.ceil(math.ceil(n / batch_size) / workers) * workers
    return math.ceil(n / batches)


@cache
def _scoring_pool(workers: int) -> ThreadPoolExecutor:
    """Threads kept for the process (starting two took 0.2-0.3 ms a call, a tenth of scoring
    a few thousand rows), each with one intra-op torch thread of its own.

    torch keeps a thread count per thread, which a thread takes from the last
    `torch.set_num_threads` of any thread when it first uses torch. Scoring lowered the
    caller's count to one around each call, and with it the one new threads take: a thread
    that first used torch meanwhile (a server's new request thread, scoring concurrently)
    kept one thread for good. The workers lower their own as they start, and the caller's
    count is then set again, unchanged, as the one new threads take: only a thread starting
    torch in that span, once a process, is affected."""
    threads = torch.get_num_threads()
    pool = ThreadPoolExecutor(
        workers,
        thread_name_prefix="anomaly-vae-scoring",
        initializer=_one_torch_thread,
    )
    started = threading.Barrier(workers)  # each task on a thread of its own: all start now
    list(pool.map(lambda _: started.wait(), range(workers)))
    torch.set_num_threads(threads)
    return pool


def _one_torch_thread() -> None:
    """One intra-op torch thread for this thread. torch sets a thread's count when it first
    uses torch (here, reading it), which would undo a count set before."""
    torch.get_num_threads()
    torch.set_num_threads(1)


# A forked child inherits the pool but not its threads, and would wait forever on it.
if hasattr(os, "register_at_fork"):  # not on Windows, which never forks
    os.register_at_fork(after_in_child=_scoring_pool.cache_clear)


def image_terms(
    model: ConvVAE,
    pixels: torch.Tensor,
    samples: int = 0,
    generator: torch.Generator | None = None,
    inputs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel reconstruction NLL (n, channels, size, size) and KL (n,); as `tabular_terms`.
    The encoder sees `inputs`, by default the pixels themselves: denoising training
    (`image.train_noise`) hands it noisy copies and charges the reconstruction of the clean
    pixels."""
    mu, log_var = model.encode(pixels if inputs is None else inputs)
    draws = [reparameterize(mu, log_var, generator) for _ in range(samples)] or [mu]
    nll = torch.stack([pixel_nll(model, model.decode(z), pixels) for z in draws]).mean(0)
    return nll, kl_divergence(mu, log_var)


def pixel_nll(model: ConvVAE, logits: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """-log p(x | z) per pixel and channel, for the model's likelihood (for ssim, the
    structural term that stands in for it)."""
    if model.likelihood == "bernoulli":
        return bernoulli_nll(pixels, logits)
    if model.likelihood == "ssim":
        sigma = local_sigma(model.size)
        return SSIM_NATS * structural_dissimilarity(pixels, model.mean(logits), sigma)
    return gaussian_nll(pixels, model.mean(logits), model.bounded_log_scale())


def _pixel_floor(model: ConvVAE, pixels: torch.Tensor) -> torch.Tensor:
    """The NLL of a perfect reconstruction: the entropy of a grey pixel under Bernoulli."""
    if model.likelihood == "bernoulli":
        return bernoulli_nll(pixels, torch.logit(pixels, eps=1e-6))
    if model.likelihood == "ssim":
        return torch.zeros_like(pixels)
    return (model.bounded_log_scale() + HALF_LOG_2PI).expand_as(pixels)


def local_sigma(size: int) -> float:
    """The Gaussian window, in pixels, of what counts as local in an image of `size` pixels
    a side: the blur of the anomaly maps and the window of the ssim likelihood."""
    return size / 32


# The ssim likelihood (Bergmann et al., "Improving unsupervised defect segmentation by applying
# structural similarity to autoencoders", VISAPP 2019) charges SSIM_NATS per pixel per unit of
# 1 - SSIM. Squared error spreads a broad, low-contrast defect (uneven brightness, fraying) thin
# over many pixels, each barely off; SSIM compares local brightness, contrast and structure,
# and sees it. On the magnetic tiles (make bench, 3 seeds) it raised pixel AUROC 0.716 -> 0.754
# and image AUROC 0.854 -> 0.892 (benchmarks/results/image-tuning.md). The weight sets the term
# against the KL term, in training and in the score; 10 is the one value trained.
SSIM_NATS = 10.0
# Wang et al. 2004's stabilising constants, (0.01 L)^2 and (0.03 L)^2 for pixels in [0, 1].
SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2


def structural_dissimilarity(x: torch.Tensor, y: torch.Tensor, sigma: float) -> torch.Tensor:
    """1 - SSIM(x, y) per pixel of images (n, channels, size, size) in [0, 1], from local
    means, variances and covariance over a Gaussian window: 0 where the two agree.

    In float32 whatever the autocast: the local variances are differences of nearly equal
    means, which bfloat16's 8 bits lose (the tiles trained at `bf16-mixed` with these in
    bfloat16: image AUROC 0.908 -> 0.812, pixel 0.786 -> 0.747)."""
    n, channels, height, width = x.shape
    with torch.autocast(x.device.type, enabled=False):
        x, y = x.float(), y.float()
        # The five local statistics in one blur call.
        stacked = torch.cat([x, y, x * x, y * y, x * y]).view(-1, height, width)
        mean_x, mean_y, xx, yy, xy = smooth_maps(stacked, sigma).view(5, n, channels, height, width)
        mean_xy = mean_x * mean_y
        squares = mean_x * mean_x + mean_y * mean_y
        similarity = (2 * mean_xy + SSIM_C1) * (2 * (xy - mean_xy) + SSIM_C2)
        return 1 - similarity / ((squares + SSIM_C1) * (xx + yy - squares + SSIM_C2))


def smooth_maps(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (n, h, w) maps, edges replicated: defects are regions, single noisy
    pixels are not.

    The blur is two matrix products rather than two one-channel convolutions: oneDNN ran those
    at under 1 GFLOP/s, and with their backward pass they took two thirds of an ssim training
    step; the products take a thirtieth of that time for the same sums."""
    if math.ceil(3 * sigma) < 1:
        return maps
    height, width = maps.shape[-2:]
    rows = _blur_matrix(height, sigma, maps.dtype, maps.device)
    return rows.T @ (maps @ _blur_matrix(width, sigma, maps.dtype, maps.device))


def _blur_matrix(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(size, size) weights of each input pixel (row) in each blurred pixel (column) along one
    axis: a Gaussian of 3 sigma's radius, the weight that falls past an edge given to the edge
    pixel."""
    radius = math.ceil(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, device=device)
    kernel = torch.exp(-0.5 * (offsets.to(dtype) / sigma) ** 2)
    outputs = torch.arange(size, device=device)
    sources = (outputs + offsets[:, None]).clamp(0, size - 1)
    matrix = torch.zeros(size, size, dtype=dtype, device=device)
    weights = (kernel / kernel.sum()).repeat_interleave(size)
    return matrix.index_put_((sources.flatten(), outputs.repeat(len(offsets))), weights, True)


def compressed_bits(pixels: np.ndarray) -> np.ndarray:
    """Bits zlib (level 9) needs for each image (n, channels, size, size) in [0, 1], quantized
    to 8 bits a pixel: the input complexity the reconstruction score is credited with."""
    levels = np.round(pixels * 255).astype(np.uint8)
    return np.array([8.0 * len(zlib.compress(image.tobytes(), 9)) for image in levels])


@torch.inference_mode()
def score_images(
    model: ConvVAE,
    pixels: np.ndarray,
    samples: int = 0,
    batch_size: int = 256,
    complexity_weight: float = 0.0,
) -> SampleScores:
    """Scores and anomaly maps for images (n, channels, size, size) in [0, 1]; the recon
    score less `complexity_weight` nats per bit of `compressed_bits`."""
    model.eval()
    generator = torch.Generator().manual_seed(SAMPLING_SEED) if samples else None
    sigma = local_sigma(model.size)
    recon, kl, maps = [], [], []
    for start in range(0, len(pixels), batch_size):
        x = torch.from_numpy(pixels[start : start + batch_size])
        nll, kl_batch = image_terms(model, x, samples=samples, generator=generator)
        recon.append(nll.sum((1, 2, 3)).numpy())
        kl.append(kl_batch.numpy())
        maps.append(smooth_maps((nll - _pixel_floor(model, x)).sum(1), sigma).numpy())
    credit = complexity_weight * math.log(2) * compressed_bits(pixels) if complexity_weight else 0.0
    return SampleScores(
        recon=np.concatenate(recon).astype(np.float64) - credit,
        kl=np.concatenate(kl).astype(np.float64),
        maps=np.concatenate(maps),
    )
