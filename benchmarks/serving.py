"""Serving and scale-out speed: REST latency and throughput, Spark against one process.

    python -m benchmarks.serving                  # 10,000-row REST batches, a 200,000-row file
    python -m benchmarks.serving --rows 1000000   # a larger file for Spark and the CLI

Trains a small model on scikit-learn's breast-cancer table into a temporary MLflow store,
starts `anomaly-vae serve` on a free loopback port, times one-row requests and 10,000-row
batches, then scores the same Parquet file with `anomaly-vae score` and with
`--engine spark` (local[2]), each as the command a user runs, start-up included.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ONE_ROW_REQUESTS = 100
BATCH_REQUESTS = 5
STARTUP_SECONDS = 300


def cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pipelines.cli", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True)


def train_model(folder: Path, tracking: str) -> tuple[Path, str]:
    from pipelines.demo import write_breast_cancer

    train_path, test_path = write_breast_cancer(folder)
    config = folder / "config.yaml"
    data = {"path": str(train_path), "label": "label", "id_columns": ["id"]}
    config.write_text(yaml.safe_dump({"data": data, "training": {"epochs": 20}, "name": "bench"}))
    uri = cli("train", str(config), "--tracking-uri", tracking).stdout.strip().splitlines()[-1]
    return test_path, uri


def bigger(test_path: Path, rows: int, seed: int = 0) -> pd.DataFrame:
    """`rows` rows drawn from the test file, with fresh ids."""
    frame = pd.read_parquet(test_path).drop(columns=["label"])
    rng = np.random.default_rng(seed)
    drawn = frame.iloc[rng.integers(0, len(frame), rows)].reset_index(drop=True)
    drawn["id"] = np.arange(rows)
    return drawn


def post(url: str, frame: pd.DataFrame) -> float:
    body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))})
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as response:
        response.read()
        assert response.status == 200
    return time.perf_counter() - started


def start_server(model: str, tracking: str, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "pipelines.cli", "serve", model, "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--tracking-uri", tracking],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2):
                return process, url
        except OSError:
            time.sleep(0.5)
    stop(process)
    raise RuntimeError(f"server did not answer /ping:\n{log.read_text()[-2000:]}")


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=60)


def rest(model: str, tracking: str, rows: pd.DataFrame, folder: Path) -> list[tuple[str, str]]:
    process, url = start_server(model, tracking, folder / "server.log")
    try:
        one = rows.head(1)
        post(f"{url}/invocations", one)  # warm-up
        single = [post(f"{url}/invocations", one) for _ in range(ONE_ROW_REQUESTS)]
        batch = rows.head(10_000)
        batches = [post(f"{url}/invocations", batch) for _ in range(BATCH_REQUESTS)]
    finally:
        stop(process)
    seconds = statistics.median(batches)
    return [
        ("REST, 1 row: median latency", f"{1000 * statistics.median(single):.1f} ms"),
        ("REST, 1 row: 95th percentile", f"{1000 * np.percentile(single, 95):.1f} ms"),
        ("REST, 10,000-row batch: median time", f"{seconds:.2f} s"),
        ("REST, 10,000-row batch: throughput", f"{len(batch) / seconds:,.0f} rows/s"),
    ]


def files(model: str, tracking: str, path: Path, rows: int) -> list[tuple[str, str]]:
    results = []
    for engine, output in [
        ("local", path.with_name("scored.parquet")),
        ("spark", path.with_name("scored_spark")),
    ]:
        started = time.perf_counter()
        done = cli(
            "score",
            model,
            str(path),
            "-o",
            str(output),
            "--engine",
            engine,
            "--tracking-uri",
            tracking,
        )
        wall = time.perf_counter() - started
        scoring = float(done.stderr.rsplit(" in ", 1)[1].split(" s ")[0])
        results.append(
            (
                f"score --engine {engine}, {rows:,} rows: whole command",
                f"{wall:.1f} s ({rows / wall:,.0f} rows/s)",
            )
        )
        results.append(
            (
                f"score --engine {engine}: scoring alone",
                f"{scoring:.1f} s ({rows / scoring:,.0f} rows/s)",
            )
        )
    local = pd.read_parquet(path.with_name("scored.parquet"))
    spark = pd.read_parquet(path.with_name("scored_spark"))
    same = bool(np.allclose(local["score"], spark["score"], rtol=1e-12))
    results.append(("Spark scores equal single-process ones", str(same)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, default=200_000, help="rows in the file for Spark and the CLI"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        folder = Path(tmp)
        tracking = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
        test_path, model = train_model(folder, tracking)
        table = bigger(test_path, max(args.rows, 10_000))
        path = folder / "batch.parquet"
        table.head(args.rows).to_parquet(path, index=False)
        results = rest(model, tracking, table, folder) + files(model, tracking, path, args.rows)
    print("| measure | value |\n| --- | --- |")
    for name, value in results:
        print(f"| {name} | {value} |")
    print(f"\n{os.cpu_count()} CPU cores; load average {os.getloadavg()[0]:.1f} at the end")
    print("command: python -m benchmarks.serving " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
