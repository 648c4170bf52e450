"""Config loading: defaults, overrides and the errors users see."""

from pathlib import Path

import pytest

from anomaly_vae.config import load_config, read_yaml
from anomaly_vae.errors import InputError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fraud.yaml"
    path.write_text(text)
    return path


def test_two_keys_are_enough(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "data:\n  path: t.parquet\n  label: y\n"))
    assert config.data.path == "t.parquet"
    assert config.data.label == "y"
    assert config.name == "fraud"  # experiment and registered model default to the file name
    assert config.model.latent > 0 and config.training.epochs > 0


def test_overrides_are_parsed_and_validated(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  path: t.parquet\n")
    config = load_config(
        path, ["data.path=other.parquet", "training.epochs=3", "model.hidden=[32, 16]"]
    )
    assert config.data.path == "other.parquet"
    assert config.training.epochs == 3
    assert config.model.hidden == [32, 16]
    with pytest.raises(InputError, match="training.epochs"):
        load_config(path, ["training.epochs=-1"])


def test_true_or_false_where_a_number_belongs_is_refused(tmp_path: Path) -> None:
    """`epochs: true` was read as 1: it trained one epoch and registered the champion without
    a word, where `epochs: abc` stops."""
    path = _write(tmp_path, "data:\n  path: t.parquet\ntraining:\n  epochs: true\n")
    with pytest.raises(InputError) as refused:
        load_config(path)
    assert str(refused.value) == f"{path}: 'training.epochs': a number, not true"
    for key, value in [
        ("training.learning_rate", "false"),
        ("training.gradient_clip", "false"),
        ("calibration.cost_fn", "false"),
        ("image.channels", "false"),  # a choice of numbers: read as 1
        ("model.hidden", "[false, 64]"),  # a list of them: read as [1, 64]
    ]:
        with pytest.raises(InputError, match=f"'{key}': a number, not false$"):
            load_config(_write(tmp_path, "data:\n  path: t.parquet\n"), [f"{key}={value}"])
    assert load_config(path, ["training.epochs=3", "image.augment=true"]).image.augment is True


def test_yes_and_no_are_label_values_not_booleans(tmp_path: Path) -> None:
    # YAML 1.1 (PyYAML's default) reads yes/no/on/off as booleans, and the string key refused
    # them; the bank data's label is "yes".
    path = _write(tmp_path, "data:\n  path: t.parquet\n  label: y\n  anomaly_value: yes\n")
    assert load_config(path).data.anomaly_value == "yes"
    assert load_config(path, ["data.anomaly_value=no"]).data.anomaly_value == "no"
    config = load_config(path, ["image.augment=yes", "data.categorical=[on, off]"])
    assert config.image.augment is True  # boolean keys still read yes as true
    assert config.data.categorical == ["on", "off"]
    assert load_config(path, ["image.augment=false"]).image.augment is False
    # A number (a class code) is kept as the text it was written as.
    assert load_config(path, ["data.anomaly_value=2"]).data.anomaly_value == "2"


@pytest.mark.parametrize(
    ("value", "read"),
    [("010", 10), ("-007", -7), ("1:30", "1:30"), ("0b11", "0b11"), ("0o17", 15), ("0x1F", 31)],
)
def test_integers_are_yaml_1_2_integers(value: str, read: int | str) -> None:
    # YAML 1.1 (PyYAML's default) read 010 as octal 8, 1:30 in base 60 as 90 and 0b11 as 3:
    # `anomaly_value: 010` named the label 8.
    assert read_yaml(value) == read


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "data:\n  path: t.parquet\n  lable: y\n",
            r"unknown key 'data\.lable' \(did you mean 'data\.label'\?\)$",
        ),
        (
            "data:\n  path: t.parquet\ntraning:\n  epochs: 3\n",
            r"unknown key 'traning' \(did you mean 'training'\?\)$",
        ),
        ("data:\n  path: t.parquet\nmodel:\n  foo: 3\n", "unknown key 'model.foo'$"),
        # A key is offered for a key, not the section it is in.
        ("data:\n  path: t.parquet\ntraining:\n  lr: 3\n", "unknown key 'training.lr'$"),
        ("model:\n  latent: 4\n", "missing required key 'data'"),
        # Scoring cuts rows into batches its cache suits; a size set here was read by nothing.
        ("data:\n  path: t.parquet\nscoring:\n  batch_size: 8\n", "unknown key 'scoring.batch"),
        ("data: [unclosed\n", "not valid YAML"),
        ("- a\n- b\n", "mapping"),
        (
            "data:\n  path: t.parquet\ncalibration:\n  strategy: estimated-f1\n",
            "estimated-f1 needs unlabelled new data",
        ),
    ],
)
def test_config_mistakes_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        load_config(_write(tmp_path, text))
    assert str(tmp_path) in str(info.value)
    assert "\n" not in str(info.value)


def test_a_section_left_empty_takes_its_defaults(tmp_path: Path) -> None:
    # `training:` with every key under it commented out is YAML's null: it was refused as
    # "Input should be a valid dictionary or instance of TrainingConfig", and `--set
    # training.epochs=3` on it as "'training' is not a section".
    path = _write(tmp_path, "data:\n  path: t.parquet\ntraining:\n  # epochs: 3\nmodel:\n")
    assert load_config(path).training.epochs == 24
    assert load_config(path, ["training.trainer.devices=2"]).training.trainer.devices == 2
    with pytest.raises(InputError, match="missing required key 'data.path'"):
        load_config(_write(tmp_path, "data:\n"))


def test_a_precision_lightning_takes_as_a_number_is_taken(tmp_path: Path) -> None:
    # `precision: 64`, as Lightning's own examples write it, was refused as "Input should be
    # a valid string".
    from anomaly_vae.training import _trainer

    path = _write(tmp_path, "data: {path: t.parquet}\ntraining:\n  trainer: {precision: 64}\n")
    assert _trainer(load_config(path).training, callbacks=[]).precision == "64-true"


@pytest.mark.parametrize("strategy", ["fpr<0.01", "F1", "recall>=90"])
def test_a_misspelt_calibration_strategy_is_refused_before_training(
    tmp_path: Path, strategy: str
) -> None:
    # It was found only once the model had trained, leaving a FAILED run behind.
    path = _write(tmp_path, "data: {path: t.parquet}\n")
    with pytest.raises(InputError, match=f"'calibration.strategy': .*strategy '{strategy}'"):
        load_config(path, [f"calibration.strategy={strategy}"])
    assert load_config(path, ["calibration.strategy=recall >= 0.9"]).calibration.strategy


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_models_saved_before_the_activation_option_keep_silu() -> None:
    import pandas as pd
    from torch import nn

    from anomaly_vae.config import ModelConfig
    from anomaly_vae.data.preprocessing import TabularPreprocessor
    from anomaly_vae.detector import build_tabular_model

    frame = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1.0, 0.0, 1.0, 0.0]})
    preprocessor = TabularPreprocessor.fit(frame, ["a", "b"], categorical=[])
    saved = ModelConfig().model_dump()
    current = build_tabular_model(preprocessor, saved)
    del saved["activation"]  # as in a detector.json written before the option existed
    older = build_tabular_model(preprocessor, saved)
    assert any(isinstance(m, nn.SiLU) for m in older.modules())
    assert not any(isinstance(m, nn.SiLU) for m in current.modules())


def test_a_mistake_in_an_override_names_the_override_not_the_file(tmp_path: Path) -> None:
    """`train configs/mnist.yaml --set training.epoch=3` said "configs/mnist.yaml: unknown key
    'training.epoch'", sending the reader to a file that does not hold it."""
    path = _write(tmp_path, "data:\n  path: t.parquet\n")
    with pytest.raises(InputError) as info:
        load_config(path, ["training.epoch=3"])
    assert str(info.value) == (
        "--set 'training.epoch=3': unknown key 'training.epoch' (did you mean 'training.epochs'?)"
    )
    with pytest.raises(InputError) as info:
        load_config(path, ["training.epochs=3", "training.epochs=many"])
    assert str(info.value).startswith("--set 'training.epochs=many': 'training.epochs': ")
    # A mistake in the file is still the file's, whatever else is set.
    path = _write(tmp_path, "data:\n  path: t.parquet\n  lable: y\n")
    with pytest.raises(InputError) as info:
        load_config(path, ["training.epochs=3"])
    assert str(info.value) == f"{path}: unknown key 'data.lable' (did you mean 'data.label'?)"
    # A check of a whole section names the file and the --set within it, either of which
    # may be at fault: the file alone was blamed for `--set calibration.strategy=cost`.
    path = _write(tmp_path, "data:\n  path: t.parquet\n")
    with pytest.raises(InputError) as info:
        load_config(path, ["calibration.strategy=cost"])
    assert str(info.value).startswith(
        f"{path} with --set 'calibration.strategy=cost': 'calibration': "
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("mlflow: {registered_model: fraud/cards}\n", "mlflow.registered_model"),
        ("name: 'fraud:cards'\n", "name"),
    ],
)
def test_a_model_name_mlflow_refuses_is_refused_before_training(
    tmp_path: Path, text: str, key: str
) -> None:
    # MLflow refused it only when the trained model was registered: a traceback, a FAILED run.
    with pytest.raises(InputError, match=f"'{key}': .* is no model name: MLflow's names hold"):
        load_config(_write(tmp_path, f"data: {{path: t.parquet}}\n{text}"))


@pytest.mark.parametrize("text", ["mlflow: {registered_model: a@b}\n", "name: a@b\n"])
def test_a_model_name_with_an_alias_sign_is_refused_before_training(
    tmp_path: Path, text: str
) -> None:
    # MLflow registered it, but models:/a@b/1, the version URI `train` printed, read as the
    # alias 'b/1' of a model 'a': "Registered Model with name=a not found".
    with pytest.raises(InputError, match="'a@b' is no model name: '@' starts an alias"):
        load_config(_write(tmp_path, f"data: {{path: t.parquet}}\n{text}"))


def test_a_name_with_a_slash_may_name_the_experiment_beside_a_registered_model(
    tmp_path: Path,
) -> None:
    text = "data: {path: t.parquet}\nname: team/fraud\nmlflow: {registered_model: fraud}\n"
    assert load_config(_write(tmp_path, text)).name == "team/fraud"


def test_a_file_name_that_cannot_name_the_model_is_blamed_on_the_file_name(
    tmp_path: Path,
) -> None:
    """The line blamed a key 'name' that the file does not hold."""
    path = tmp_path / "fraud@v2.yaml"
    path.write_text("data: {path: t.parquet}\n")
    with pytest.raises(InputError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: the config sets no name, so its file name names the model, and 'fraud@v2' is "
        "no model name: '@' starts an alias in models:/ URIs; set name (or "
        "mlflow.registered_model) in the config, or rename the file"
    )
    assert load_config(path, ["mlflow.registered_model=fraud"]).name == "fraud@v2"
    assert load_config(path, ["name=fraud"]).name == "fraud"


def test_a_list_of_device_ids_is_taken(tmp_path: Path) -> None:
    # Lightning's `devices=[0, 1]` picks those devices: it was refused as "Input should be a
    # valid integer".
    path = _write(tmp_path, "data: {path: t.parquet}\ntraining:\n  trainer: {devices: [0, 1]}\n")
    assert load_config(path).training.trainer.devices == [0, 1]
    assert load_config(path, ["training.trainer.devices=[1]"]).training.trainer.devices == [1]
    with pytest.raises(InputError, match="'training.trainer.devices"):
        load_config(path, ["training.trainer.devices=[gpu0]"])


def test_a_number_given_as_a_name_is_the_text_it_was_written_as(tmp_path: Path) -> None:
    # YAML reads them as numbers, and each was refused as "Input should be a valid string".
    text = (
        "data: {path: 2024, label: 1, id_columns: [007], drop: [1.50], categorical: [0x1F]}\n"
        "image: {normal: [0], labels_csv: 12}\n"
        "mlflow: {experiment: 2024, registered_model: 0042}\n"
        "name: 3\n"
    )
    config = load_config(_write(tmp_path, text))
    assert (config.data.path, config.data.label) == ("2024", "1")
    assert (config.data.id_columns, config.data.drop) == (["007"], ["1.50"])
    assert config.data.categorical == ["0x1F"]
    assert (config.image.normal, config.image.labels_csv) == (["0"], "12")
    assert (config.mlflow.experiment, config.mlflow.registered_model) == ("2024", "0042")
    assert config.name == "3"
    assert load_config(_write(tmp_path, text), ["name=010"]).name == "010"
    # Number keys still read numbers, and a boolean is no name.
    assert load_config(_write(tmp_path, text), ["training.epochs=010"]).training.epochs == 10
    with pytest.raises(InputError, match="'data.label': Input should be a valid string"):
        load_config(_write(tmp_path, text), ["data.label=true"])


def test_a_path_in_the_config_expands_the_home_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `path: ~/t.parquet` was looked for in a folder named `~` in the working directory.
    monkeypatch.setenv("HOME", str(tmp_path))
    path = _write(tmp_path, "data: {path: ~/t.parquet}\nimage: {labels_csv: ~/labels.csv}\n")
    config = load_config(path)
    assert config.data.path == str(tmp_path / "t.parquet")
    assert config.image.labels_csv == str(tmp_path / "labels.csv")
    assert load_config(path, ["data.path=~/u.csv"]).data.path == str(tmp_path / "u.csv")


def test_the_settings_of_a_kind_leave_out_what_only_the_other_kind_reads(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "data:\n  path: t.parquet\n"))
    table, image = config.settings_for("table"), config.settings_for("image")
    assert "image" not in table and "conv_channels" not in table["model"]
    assert table["model"]["hidden"] == config.model.hidden
    assert image["image"] == config.image.model_dump() and "hidden" not in image["model"]
    assert image["model"]["conv_channels"] == config.model.conv_channels
    assert config.model_dump()["model"]["hidden"]  # the config itself keeps every key
