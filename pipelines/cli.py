"""The `anomaly-vae` command line: each command parses options and calls one pipeline.

Heavy libraries are imported inside the commands, so `anomaly-vae --help` is instant.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

tracking_option = click.option(
    "--tracking-uri",
    envvar="MLFLOW_TRACKING_URI",
    help="MLflow tracking URI [env MLFLOW_TRACKING_URI; default sqlite:///mlruns/mlflow.db].",
)


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Report InputError as one line and a non-zero exit, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from anomaly_vae.errors import InputError

        try:
            return command(*args, **kwargs)
        except InputError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="anomaly-vae")
def main() -> None:
    """Train variational autoencoders on normal data and flag anomalies in new data."""


@main.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key, e.g. --set training.epochs=20.")
@tracking_option
@user_errors
def train(config_path: str, overrides: tuple[str, ...], tracking_uri: str | None) -> None:
    """Train, calibrate and register a model; prints its URI last."""
    from anomaly_vae.config import load_config
    from pipelines.train import train as run_training

    config = load_config(config_path, overrides)
    uri = run_training(config, tracking_uri, echo=lambda line: click.echo(line, err=True))
    click.echo(uri)


@main.command()
@click.argument("model_uri", metavar="MODEL")
@click.argument("input_path", metavar="INPUT", type=click.Path())
@click.option("-o", "--output", "output_path", required=True, type=click.Path(dir_okay=False), help="Output CSV or Parquet file.")
@click.option("--keep-columns", is_flag=True, help="Keep all input columns, not just the id columns.")
@click.option("--allow-extra-columns", is_flag=True, help="Ignore input columns the model does not know.")
@tracking_option
@user_errors
def score(
    model_uri: str,
    input_path: str,
    output_path: str,
    keep_columns: bool,
    allow_extra_columns: bool,
    tracking_uri: str | None,
) -> None:
    """Score a CSV or Parquet file with MODEL (models:/name@alias, models:/name/N, runs:/..., or a directory)."""
    from pipelines.score import score_file

    summary = score_file(
        model_uri, input_path, output_path, keep_columns, allow_extra_columns, tracking_uri
    )
    click.echo(summary.line(), err=True)


@main.command()
@click.argument("model_uri", metavar="MODEL")
@click.argument("input_path", metavar="INPUT", type=click.Path())
@click.option("--label", help="Label column [default: the one the model was trained with].")
@click.option("--allow-extra-columns", is_flag=True, help="Ignore input columns the model does not know.")
@tracking_option
@user_errors
def evaluate(
    model_uri: str,
    input_path: str,
    label: str | None,
    allow_extra_columns: bool,
    tracking_uri: str | None,
) -> None:
    """Report AUROC, AP and the threshold's precision, recall and F1 on a labelled file."""
    from pipelines.evaluate import evaluate_file

    evaluation = evaluate_file(model_uri, input_path, label, allow_extra_columns, tracking_uri)
    for line in evaluation.lines():
        click.echo(line)
    click.echo(f"logged to MLflow run {evaluation.run_id}", err=True)


if __name__ == "__main__":
    main()
