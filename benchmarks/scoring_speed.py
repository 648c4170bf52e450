"""Scoring speed and memory of the `anomaly-vae` command, against pyarrow and Python imports.

    python -m benchmarks.scoring_speed                 # the 10-million-row file of the issue
    python -m benchmarks.scoring_speed --rows 1000000  # a quick run

Generates a 30-column Parquet file into a temporary folder, trains a small detector on rows
of the same distribution, and times as separate processes under `/usr/bin/time -v` (wall
time and peak resident memory): `anomaly-vae score` on the file; pyarrow alone reading the
file and writing four score columns; `anomaly-vae --help`; scoring a 10-row file with a
`models:/` URI; and `python -c "import torch, mlflow"`.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

DEFAULT_ROWS = 10_000_000
COLUMNS = 30
CHUNK_ROWS = 1_000_000
TIME = "/usr/bin/time"
BIN = Path(sys.executable).parent
# What pyarrow alone needs to do: read every column, write four columns of scores.
PYARROW_BASELINE = """
import sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq
table = pq.read_table(sys.argv[1])
n = table.num_rows
zeros = np.zeros(n)
pq.write_table(pa.table({"recon_score": zeros, "kl_score": zeros, "score": zeros,
                         "is_anomaly": np.zeros(n, dtype=bool)}), sys.argv[2])
"""


@dataclass
class Measured:
    seconds: float
    peak_mib: float


def timed(command: list[str]) -> Measured:
    """Wall time and peak RSS of one process, from `/usr/bin/time -v`."""
    done = subprocess.run([TIME, "-v", *command], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {done.stderr[-2000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    hours, minutes, seconds = wall.groups()
    total = int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)
    return Measured(total, int(rss.group(1)) / 1024)


def median_of(command: list[str], repeats: int) -> Measured:
    runs = [timed(command) for _ in range(repeats)]
    return Measured(statistics.median(r.seconds for r in runs), max(r.peak_mib for r in runs))


def random_rows(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Correlated Gaussian features, so the detector has structure to learn."""
    latent = rng.standard_normal((n, 4))
    mixing = np.random.default_rng(0).standard_normal((4, COLUMNS))
    values = latent @ mixing + 0.3 * rng.standard_normal((n, COLUMNS))
    return pd.DataFrame(values, columns=[f"f{j}" for j in range(COLUMNS)])


def write_parquet(path: Path, rows: int) -> None:
    rng = np.random.default_rng(1)
    writer = None
    for start in range(0, rows, CHUNK_ROWS):
        table = pa.Table.from_pandas(
            random_rows(rng, min(CHUNK_ROWS, rows - start)), preserve_index=False
        )
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def train_detector(folder: Path, tracking_uri: str) -> str:
    """A detector with our defaults (but few epochs), registered in a private MLflow store."""
    from anomaly_vae.config import parse_config
    from pipelines.train import train

    train_path = folder / "train.parquet"
    random_rows(np.random.default_rng(2), 20_000).to_parquet(train_path)
    config = parse_config(
        {"data": {"path": str(train_path)}, "training": {"epochs": 5}, "name": "speed"}
    )
    return train(config, tracking_uri, echo=lambda line: None)


def run(rows: int, workdir: Path) -> str:
    """Every measurement, as a Markdown section."""
    tracking_uri = f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"
    model_uri = train_detector(workdir, tracking_uri)
    big = workdir / "big.parquet"
    write_parquet(big, rows)
    small = workdir / "small.parquet"
    pq.write_table(pq.read_table(big).slice(0, 10), small)
    cli = str(BIN / "anomaly-vae")
    env_uri = ["--tracking-uri", tracking_uri]
    score = timed([cli, "score", model_uri, str(big), "-o", str(workdir / "out.parquet"), *env_uri])
    arrow = timed([sys.executable, "-c", PYARROW_BASELINE, str(big), str(workdir / "base.parquet")])
    help_ = median_of([cli, "--help"], 5)
    small_score = median_of(
        [cli, "score", model_uri, str(small), "-o", str(workdir / "small_out.parquet"), *env_uri], 3
    )
    imports = median_of([sys.executable, "-c", "import torch, mlflow"], 3)
    size_mib = big.stat().st_size / 2**20
    checks = [
        (
            score.seconds <= 3 * arrow.seconds,
            f"`score` on {rows:,} rows: {score.seconds:.1f} s = "
            f"{score.seconds / arrow.seconds:.2f}x pyarrow's {arrow.seconds:.1f} s (target <= 3x)",
        ),
        (
            score.peak_mib < 1024,
            f"`score` peak RSS {score.peak_mib:,.0f} MiB (pyarrow alone {arrow.peak_mib:,.0f} MiB; "
            "target < 1024 MiB)",
        ),
        (help_.seconds < 0.3, f"`anomaly-vae --help`: {help_.seconds:.2f} s (target < 0.3 s)"),
        (
            small_score.seconds <= 1.3 * imports.seconds,
            f"10-row `score` with a models:/ URI: {small_score.seconds:.2f} s = "
            f"{small_score.seconds / imports.seconds:.2f}x `import torch, mlflow` "
            f"{imports.seconds:.2f} s (target <= 1.3x)",
        ),
    ]
    lines = [
        "## Scoring speed and memory",
        "",
        f"A {rows:,}-row, {COLUMNS}-column float64 Parquet file ({size_mib:,.0f} MiB); each "
        "figure is a separate process timed by `/usr/bin/time -v` (median of 5 for `--help`, "
        "of 3 for the 10-row file and the imports). The cores were shared, so times are noisy.",
        "",
        "| command | wall s | peak RSS MiB |",
        "| --- | --- | --- |",
        f"| `anomaly-vae score` ({rows:,} rows) | {score.seconds:.1f} | {score.peak_mib:,.0f} |",
        f"| pyarrow read + write 4 columns | {arrow.seconds:.1f} | {arrow.peak_mib:,.0f} |",
        f"| `anomaly-vae --help` | {help_.seconds:.2f} | {help_.peak_mib:,.0f} |",
        f"| `anomaly-vae score` (10 rows, models:/) | {small_score.seconds:.2f} | "
        f"{small_score.peak_mib:,.0f} |",
        f'| `python -c "import torch, mlflow"` | {imports.seconds:.2f} | {imports.peak_mib:,.0f} |',
        "",
        "### Targets",
        "",
        *[f"- {'met' if ok else 'MISSED'}: {text}" for ok, text in checks],
        "",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="rows in the big file")


def run_from_args(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory(prefix="anomaly-vae-speed-") as tmp:
        return run(args.rows, Path(tmp))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    print(run_from_args(parser.parse_args()))


if __name__ == "__main__":
    main()
