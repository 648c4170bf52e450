"""The `anomaly-vae` command line: each command parses options and calls one pipeline.

Heavy libraries are imported inside the commands, so `anomaly-vae --help` is instant.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click


class UserPath(click.Path):
    """A path whose `~` is expanded: a shell leaves it as typed in quotes or after `=`
    (`--output=~/scored.csv`), and a config named `~/fraud.yaml` was "not found"."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return super().convert(os.path.expanduser(value), param, ctx)


tracking_option = click.option(
    "--tracking-uri",
    envvar="MLFLOW_TRACKING_URI",
    help="MLflow tracking URI [env MLFLOW_TRACKING_URI; default sqlite:///mlruns/mlflow.db].",
)


def cost_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--cost-fn and --cost-fp: what a missed anomaly and a false alarm cost."""
    command = click.option(
        "--cost-fp", type=float, help="Cost of one false alarm (with --cost-fn)."
    )(command)
    return click.option(
        "--cost-fn", type=float, help="Cost of one missed anomaly (with --cost-fp)."
    )(command)


def parse_costs(cost_fn: float | None, cost_fp: float | None):  # noqa: ANN201 - Costs | None
    from anomaly_vae.calibration import Costs

    if cost_fn is None and cost_fp is None:
        return None
    if cost_fn is None or cost_fp is None:
        raise click.UsageError("--cost-fn and --cost-fp go together")
    return Costs(fn=cost_fn, fp=cost_fp)


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Report InputError as one line and a non-zero exit, without a traceback; and a command
    stopped by Ctrl-C (or SIGTERM, where it says what it left) in one line, exit 128 + signal
    as a shell reports it: click's "Aborted!" exited 1, as a failure does."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from anomaly_vae.errors import InputError, Interrupted

        try:
            return command(*args, **kwargs)
        except InputError as exc:
            raise click.ClickException(str(exc)) from None
        except Interrupted as exc:
            _say_interrupted(exc.signum, str(exc))
        except KeyboardInterrupt:
            _say_interrupted(signal.SIGINT, "")
        except SystemExit as exc:
            # `stopped_by_sigterm`'s exit, outside an MLflow run: it exited 143 without a word,
            # where Ctrl-C at the same point says what stopped the command.
            if exc.code == 128 + signal.SIGTERM:
                _say_interrupted(signal.SIGTERM, "")
            raise

    return wrapper


def _say_interrupted(signum: int, left: str) -> NoReturn:
    name = click.get_current_context().info_name
    line = f"{name} interrupted ({signal.Signals(signum).name})"
    click.echo(f"{line}: {left}" if left else line, err=True)
    raise click.exceptions.Exit(128 + signum)


def stopped_by_sigterm(command: Callable[..., Any]) -> Callable[..., Any]:
    """Run the command with SIGTERM raising SystemExit(143), as Ctrl-C raises KeyboardInterrupt.

    Python's default SIGTERM action ends the process at once, running no `finally` and no
    `with` exit: `timeout` or a job scheduler stopping `score` left its temporary output file
    (hundreds of MB on a large input), Spark's staging folder and the downloaded model's
    folder behind. In `train` this covers reading and splitting the data; during the fit
    Lightning's own handler runs first, then this one (`anomaly_vae.training`).
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            return command(*args, **kwargs)
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def finished_once_registered(command: Callable[..., Any]) -> Callable[..., Any]:
    """A Ctrl-C or SIGTERM that arrives once the command has begun registering a version is
    acted on after the command has finished and reported: the version stands, and its
    lines name it (`anomaly_vae.interruptions`). The exit status is then the signal's."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from anomaly_vae.interruptions import interruptions_held_to_the_end

        with interruptions_held_to_the_end() as held:
            result = command(*args, **kwargs)
        if held.signum is None:
            return result
        name = signal.Signals(held.signum).name
        click.echo(f"stopped by {name} after the version above was registered; it stands", err=True)
        raise click.exceptions.Exit(128 + held.signum)  # said already: not `user_errors`' line

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="anomaly-vae")
def main() -> None:
    """Train variational autoencoders on normal data and flag anomalies in new data."""


@main.command()
@click.argument("config_path", metavar="CONFIG", type=UserPath(dir_okay=False))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key, e.g. --set training.epochs=20.",
)
@click.option(
    "--promote/--no-promote",
    default=None,
    help="Move the champion alias to the new version, or leave it where it is. Without "
    "either, it moves, but a table model that reads other columns than the champion stops "
    "train before it trains.",
)
@tracking_option
@user_errors
@stopped_by_sigterm
@finished_once_registered
def train(
    config_path: str, overrides: tuple[str, ...], promote: bool | None, tracking_uri: str | None
) -> None:
    """Train, calibrate and register a model; prints its URI last."""
    from anomaly_vae.config import load_config
    from pipelines.train import train as run_training

    config = load_config(config_path, overrides)
    uri = run_training(
        config, tracking_uri, echo=lambda line: click.echo(line, err=True), promote=promote
    )
    click.echo(uri)


@main.command()
@click.argument("model_uri", metavar="MODEL")
@click.argument("input_path", metavar="INPUT", type=UserPath())
@click.option(
    "-o",
    "--output",
    "output_path",
    required=True,
    # No dir_okay=False: an existing folder is for the engine to refuse in its own line
    # (Spark writes a folder); click's usage error said only "is a directory".
    type=UserPath(),
    help="Output CSV (.csv or .tsv, or compressed: .csv.gz, .csv.bz2, .csv.zst) or Parquet file (with --engine spark: a new folder of Parquet parts).",
)
@click.option(
    "--keep-columns", is_flag=True, help="Keep all input columns, not just the id columns."
)
@click.option(
    "--allow-extra-columns", is_flag=True, help="Ignore input columns the model does not know."
)
@click.option(
    "--engine",
    type=click.Choice(["local", "spark"]),
    default="local",
    show_default=True,
    help="spark: score a Parquet file or folder with a local[2] Spark session (pip install 'anomaly-vae[spark]').",
)
@click.option(
    "--maps",
    "maps_dir",
    type=UserPath(file_okay=False),
    help="Images: write a heatmap overlay PNG per image into this new or empty folder.",
)
@tracking_option
@user_errors
@stopped_by_sigterm
def score(
    model_uri: str,
    input_path: str,
    output_path: str,
    keep_columns: bool,
    allow_extra_columns: bool,
    engine: str,
    maps_dir: str | None,
    tracking_uri: str | None,
) -> None:
    """Score a CSV (plain, .tsv, .csv.gz, .csv.bz2 or .csv.zst) or Parquet file, a folder of Parquet files, or an image, a folder of them or an IDX file, with MODEL (models:/name@alias, models:/name/N, runs:/..., or a directory)."""
    if engine == "spark":
        if maps_dir:
            raise click.UsageError("--maps needs --engine local: Spark scores tables")
        from pipelines.score_spark import score_with_spark as score_file
    else:
        from pipelines.score import score_file

    options = {"maps_dir": maps_dir} if maps_dir else {}  # images, scored by the local engine
    summary = score_file(
        model_uri,
        input_path,
        output_path,
        keep_columns,
        allow_extra_columns,
        tracking_uri,
        **options,
    )
    click.echo(summary.line(), err=True)


@main.command()
@click.argument("model_uri", metavar="MODEL")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on (0.0.0.0: every interface).",
)
@click.option("--port", type=click.IntRange(1, 65535), default=5001, show_default=True)
@tracking_option
@user_errors
def serve(model_uri: str, host: str, port: int, tracking_uri: str | None) -> None:
    """Serve MODEL over REST with MLflow's scoring server (POST /invocations, GET /ping)."""
    from pipelines.serve import serve as run_server

    run_server(model_uri, host, port, tracking_uri, echo=lambda line: click.echo(line, err=True))


held_out_option = click.option(
    "--held-out-only",
    is_flag=True,
    help="Images: only the normal images the model's image.holdout_fraction kept out of "
    "training (by file name), plus all anomalies.",
)


anomaly_value_option = click.option(
    "--anomaly-value",
    help="Label value that marks an anomaly [default: the model's data.anomaly_value, else "
    "non-zero numbers and true].",
)


@main.command()
@click.argument("model_uri", metavar="MODEL")
@click.argument("input_path", metavar="INPUT", type=UserPath())
@click.option("--label", help="Label column [default: the one the model was trained with].")
@anomaly_value_option
@click.option(
    "--allow-extra-columns", is_flag=True, help="Ignore input columns the model does not know."
)
@click.option(
    "-o",
    "--output",
    "report_path",
    type=UserPath(dir_okay=False),
    help="Write a self-contained HTML report here.",
)
@cost_options
@click.option(
    "--label-from",
    metavar="folder|CSV",
    type=UserPath(),
    help="Images: labels from folder names (or an IDX labels file) or a path,label CSV [default: the model's config].",
)
@held_out_option
@tracking_option
@user_errors
@stopped_by_sigterm
def evaluate(
    model_uri: str,
    input_path: str,
    label: str | None,
    anomaly_value: str | None,
    allow_extra_columns: bool,
    report_path: str | None,
    cost_fn: float | None,
    cost_fp: float | None,
    label_from: str | None,
    held_out_only: bool,
    tracking_uri: str | None,
) -> None:
    """Report AUROC, AP and the threshold's precision, recall and F1 on a labelled file.

    The figures (curves, score histograms, metrics by threshold, confusion matrix, cost curve
    with --cost-fn/--cost-fp, top features) go to the MLflow run and, with -o, into one HTML file.
    """
    from pipelines.evaluate import evaluate_file

    evaluation = evaluate_file(
        model_uri,
        input_path,
        label,
        allow_extra_columns,
        tracking_uri,
        report_path,
        parse_costs(cost_fn, cost_fp),
        label_from,
        held_out_only,
        anomaly_value,
    )
    for line in evaluation.lines():
        click.echo(line)
    if evaluation.note:
        click.echo(evaluation.note, err=True)
    if evaluation.report is not None:
        click.echo(f"report written to {evaluation.report}", err=True)
    click.echo(f"logged to MLflow run {evaluation.run_id}", err=True)


@main.command()
@click.argument("model_uri", metavar="MODEL")
@click.argument("input_path", metavar="INPUT", type=UserPath())
@click.option(
    "--strategy",
    default="auto",
    show_default=True,
    help="f1, recall>=R, precision>=P, fpr<=F, quantile=Q, cost or estimated-f1; auto: f1 "
    "when INPUT has labels, else estimated-f1 (the F1 estimated against the model's normal "
    "validation scores).",
)
@click.option(
    "--label",
    help="Label column [default: the model's, when the file has it]; for images, a "
    "path,label CSV [default: folder names].",
)
@anomaly_value_option
@cost_options
@click.option(
    "--probability",
    type=click.Choice(["isotonic", "logistic", "none"]),
    default="isotonic",
    show_default=True,
    help="Calibrated probability refitted when labels are given; none removes it.",
)
@click.option("--promote", is_flag=True, help="Move the champion alias to the new version.")
@click.option(
    "--allow-extra-columns", is_flag=True, help="Ignore input columns the model does not know."
)
@held_out_option
@tracking_option
@user_errors
@stopped_by_sigterm
@finished_once_registered
def calibrate(
    model_uri: str,
    input_path: str,
    strategy: str,
    label: str | None,
    anomaly_value: str | None,
    cost_fn: float | None,
    cost_fp: float | None,
    probability: str,
    promote: bool,
    allow_extra_columns: bool,
    held_out_only: bool,
    tracking_uri: str | None,
) -> None:
    """Re-choose MODEL's threshold on INPUT and register it as a new version (same weights).

    Prints the new version's URI last; champion moves to it only with --promote.
    """
    from pipelines.calibrate import calibrate_model

    calibration = calibrate_model(
        model_uri,
        input_path,
        strategy,
        label,
        parse_costs(cost_fn, cost_fp),
        promote,
        probability,
        allow_extra_columns,
        tracking_uri,
        anomaly_value,
        held_out_only,
    )
    for line in calibration.lines():
        click.echo(line, err=True)
    click.echo(calibration.model_uri)


@main.command()
@click.option("--experiment", help="Experiment name [default: every experiment].")
@click.option("--max-runs", type=click.IntRange(min=1), default=50, show_default=True)
@tracking_option
@user_errors
def runs(experiment: str | None, max_runs: int, tracking_uri: str | None) -> None:
    """List the latest runs with their key metrics, newest first (mlflow ui shows the same)."""
    import shutil

    from pipelines.runs import format_runs, list_runs

    # A terminal's width, or COLUMNS; piped, one line a run, for grep and awk.
    wraps = sys.stdout.isatty() or "COLUMNS" in os.environ
    width = shutil.get_terminal_size().columns if wraps else None
    click.echo(format_runs(list_runs(experiment, tracking_uri, max_runs), width))


if __name__ == "__main__":
    main()
