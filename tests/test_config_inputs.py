"""Config mistakes that used to end in a traceback or a silently different model."""

from pathlib import Path

import pytest

from anomaly_vae.config import load_config, read_yaml
from anomaly_vae.errors import InputError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fraud.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("override", ["training.epochs=[1", "data.label=@x", "data.label=a: b: c"])
def test_an_override_that_is_not_yaml_names_the_override(tmp_path: Path, override: str) -> None:
    path = _write(tmp_path, "data:\n  path: t.parquet\n")
    with pytest.raises(InputError, match="not a valid YAML value") as info:
        load_config(path, [override])
    assert f"--set {override!r}" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_config_file_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"data:\n  path: t.parquet\n  label: caf\xe9\n")
    with pytest.raises(InputError, match="latin.yaml: config file is not UTF-8 text"):
        load_config(latin)
    with pytest.raises(InputError, match=f"{tmp_path}: cannot read the config file"):
        load_config(tmp_path)  # a directory


@pytest.mark.parametrize("name", ["transactions.csv", "transactions.parquet"])
def test_a_data_file_given_as_the_config_is_named_as_data(tmp_path: Path, name: str) -> None:
    # "a config must be a mapping of sections" (a CSV) or "not UTF-8 text" (Parquet) said
    # nothing of what a config is.
    import pandas as pd

    path = tmp_path / name
    frame = pd.DataFrame({"amount": [1.5, 2.0], "merchant": ["a", "b"]})
    frame.to_csv(path, index=False) if name.endswith(".csv") else frame.to_parquet(path)
    with pytest.raises(InputError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: data, not a config; a config is a YAML file that names it as data.path "
        f"('data: {{path: {path}}}'), as configs/*.yaml do"
    )


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.latent=0", "model.latent"),
        ("model.dropout=1.5", "model.dropout"),
        ("model.dropout=1", "model.dropout"),
        ("model.dropout=-1", "model.dropout"),
        ("model.beta=-0.5", "model.beta"),
    ],
)
def test_model_settings_out_of_range_name_the_key(tmp_path: Path, override: str, key: str) -> None:
    path = _write(tmp_path, "data:\n  path: t.parquet\n")
    with pytest.raises(InputError, match=f"'{key}'"):
        load_config(path, [override])
    assert load_config(path, ["model.beta=0", "model.dropout=0.5"]).model.dropout == 0.5


def test_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    # The second `training:` section used to replace the first: 24 epochs, not 2.
    text = "data:\n  path: t.parquet\ntraining:\n  epochs: 2\ntraining:\n  seed: 1\n"
    with pytest.raises(InputError, match="key 'training' appears twice, line 5") as info:
        load_config(_write(tmp_path, text))
    assert str(tmp_path) in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="--set .*key 'a' appears twice"):
        load_config(_write(tmp_path, "data:\n  path: t.parquet\n"), ["data.drop={a: 1, a: 2}"])
    # A merge key's entries may still be overridden by the mapping's own keys.
    merged = read_yaml("base: &b {epochs: 2, seed: 1}\ntraining:\n  <<: *b\n  epochs: 3\n")
    assert merged["training"] == {"epochs": 3, "seed": 1}


@pytest.mark.parametrize("key", ["id_columns", "categorical", "drop"])
def test_a_column_listed_twice_names_the_config_key(tmp_path: Path, key: str) -> None:
    path = _write(tmp_path, "data:\n  path: t.parquet\n")
    with pytest.raises(InputError, match=f"'data.{key}': .*names 'txn_id' more than once"):
        load_config(path, [f"data.{key}=[txn_id, amount, txn_id]"])


@pytest.mark.parametrize(
    ("overrides", "keys"),
    [
        (["data.drop=[is_fraud]"], "data.label"),
        (["data.id_columns=[txn_id]", "data.drop=[txn_id]"], "data.id_columns"),
    ],
)
def test_a_dropped_column_named_in_another_role_is_refused(
    tmp_path: Path, overrides: list[str], keys: str
) -> None:
    # A label also listed in data.drop trained as the label, the drop ignored without a word.
    path = _write(tmp_path, "data:\n  path: t.parquet\n  label: is_fraud\n")
    with pytest.raises(
        InputError, match=f"'data': .*'(is_fraud|txn_id)' is named in {keys} and data.drop: "
    ):
        load_config(path, overrides)
    # The label may be an id too, which carries it into scored files.
    assert load_config(path, ["data.id_columns=[is_fraud]"]).data.label == "is_fraud"


def test_columns_the_config_names_and_the_table_lacks_name_their_keys() -> None:
    # configs/creditcard.yaml pointed at another table (`--set data.path=...`, as the README
    # suggests) said only "missing column(s) 'Unnamed: 0', 'Unnamed: 0.1'", as if the file
    # were at fault.
    import pandas as pd

    from anomaly_vae.config import parse_config
    from pipelines.train import split_table

    frame = pd.DataFrame({"x": range(40), "y": [0, 1] * 20})
    data = {"path": "t.csv", "label": "fraud", "id_columns": ["id"], "drop": ["x", "copy"]}
    with pytest.raises(
        InputError,
        match=r"^t.csv: missing column\(s\) 'id', 'fraud', 'copy', which the config names in "
        r"data.id_columns, data.label, data.drop$",
    ):
        split_table(frame, parse_config({"data": data}))


@pytest.mark.parametrize(
    ("labels", "value", "held"),
    [([0, 1], "9", "'0', '1'"), (["no", "yes"], "fraud", "'no', 'yes'")],
)
def test_an_anomaly_value_no_label_equals_is_refused(
    tmp_path: Path, labels: list, value: str, held: str
) -> None:
    # Every labelled anomaly used to train as a normal row, without a word.
    import numpy as np
    import pandas as pd

    from anomaly_vae.config import parse_config
    from pipelines.train import split_table

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=60), "y": [labels[i % 2] for i in range(60)]})
    config = parse_config({"data": {"path": "t.csv", "label": "y", "anomaly_value": value}})
    with pytest.raises(
        InputError,
        match=f"t.csv: data.anomaly_value '{value}' matches no row of label column 'y', "
        f"which holds {held}$",
    ):
        split_table(frame, config)
    matching = parse_config({"data": {"path": "t.csv", "label": "y", "anomaly_value": labels[1]}})
    assert split_table(frame, matching).validation_labels.sum() == 30
    # Labels that all say normal are rows without anomalies, not a misspelt anomaly value,
    # unless such a word marks the anomalies: then 'No' throughout may be 'no' misspelt.
    if labels[0] == "no":
        normal = frame.assign(y="no")
        assert not split_table(normal, config).validation_labels.any()
        is_legit = parse_config({"data": {"path": "t.csv", "label": "y", "anomaly_value": "no"}})
        with pytest.raises(InputError, match="'no' matches no row of label column 'y'"):
            split_table(frame.assign(y="No"), is_legit)


@pytest.mark.parametrize(
    ("rule", "why"),
    [
        ("{file}.png", "fills in only {stem}, {name} and {parent}"),
        ("{0}.png", "fills in only"),
        ("{stem:>99999999999}.png", "no ! or :"),
        ("{stem", "expected '}' before end of string"),
        ("mask}.png", "Single '}'"),
    ],
)
def test_a_mask_rule_with_other_placeholders_or_braces_is_refused(
    tmp_path: Path, rule: str, why: str
) -> None:
    """Each failed at the first image: KeyError, IndexError, MemoryError, ValueError."""
    path = _write(tmp_path, f"data:\n  path: photos\nimage:\n  mask_rule: '{rule}'\n")
    with pytest.raises(InputError, match="'image.mask_rule'") as info:
        load_config(path)
    assert why in str(info.value) and "\n" not in str(info.value)
    for fine in ("{stem}_mask.png", "../masks/{parent}/{name}", "{{literal}}{stem}.png"):
        assert load_config(path, [f"image.mask_rule='{fine}'"]).image.mask_rule == fine


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("data:\n\tpath: t.parquet\n", "line 2, column 1: found character '\\t' that cannot start"),
        ("data:\n  path: [t.parquet\n", "line 3, column 1: expected ',' or ']', but got '<stream"),
    ],
)
def test_a_yaml_mistake_is_named_with_its_line(tmp_path: Path, text: str, problem: str) -> None:
    # The message held only PyYAML's context, "while scanning for the next token" or "while
    # parsing a flow sequence": neither what was wrong nor where.
    with pytest.raises(InputError) as info:
        load_config(_write(tmp_path, text))
    assert str(info.value).startswith(f"{tmp_path / 'fraud.yaml'}: not valid YAML ({problem}")
