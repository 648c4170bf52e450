"""MLflow: where runs go, logging a detector as a pyfunc model, and finding it again.

The embedded default is a SQLite store at `mlruns/mlflow.db` with artifacts under `mlruns/`
(MLflow 3 no longer accepts a bare `./mlruns` file store); `MLFLOW_TRACKING_URI` or
`--tracking-uri` point elsewhere, such as a tracking server.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from anomaly_vae.errors import InputError, Interrupted, first_line
from anomaly_vae.interruptions import hold_interruptions
from anomaly_vae.local_registry import (
    SQLITE_HEADER,
    local_model_folder,
    sqlite_file,
    stored_model_folder,
)
from anomaly_vae.store_lock import store_lock
from anomaly_vae.terminal import loggers_at
from anomaly_vae.tracking_server import check_server_answers, is_server_uri

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from mlflow.models.model import ModelInfo

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
MODEL_ARTIFACT = "model"
DETECTOR_ARTIFACT = "detector"
CHAMPION_ALIAS = "champion"
_PYFUNC_CODE = Path(__file__).with_name("mlflow_model_code.py")
_MODEL_URI = re.compile(r"^(models|runs):/")
# The process that started a run, so that `anomaly-vae runs` can tell a run whose process was
# killed outright (kill -9, the OOM killer) from a live one: the host name, the pid, and where
# Linux says so, "<boot id> <pid namespace> <start time in clock ticks after boot>".
HOST_TAG = "anomaly_vae.host"
PID_TAG = "anomaly_vae.pid"
PROCESS_TAG = "anomaly_vae.process"
ENDED_TAG = "anomaly_vae.ended"


def configure_tracking(tracking_uri: str | None = None, create: bool = True) -> str:
    """Point MLflow at `tracking_uri`, else $MLFLOW_TRACKING_URI, else the local SQLite store.

    `create=False` is for reading a store that must exist (a model lookup, `runs`): a SQLite
    path that is not there is an error, where a mistyped one used to create a new, empty store
    (its folder too) and read as "no runs yet"."""
    quiet_mlflow()
    import mlflow

    uri = _chosen_uri(tracking_uri)
    _refuse_in_memory(uri)
    _refuse_a_path(uri)
    db = sqlite_file(uri)
    if db is not None and uri != DEFAULT_TRACKING_URI and not db.exists():
        _refuse_three_slashes_for_four(uri, db)
    if db is not None and not create and not db.is_file():
        raise InputError(f"{uri}: no MLflow tracking store there; `anomaly-vae train` makes one")
    if db is not None:
        _refuse_non_sqlite(db)
        db.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # MLflow makes a new SQLite store's tables as it opens it: one process at a time.
    with store_lock(db) if db is not None else contextlib.nullcontext():
        _open_store(uri)
    return uri


def _chosen_uri(tracking_uri: str | None) -> str:
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


# What `quiet_mlflow` sets where the environment has not set it already.
_QUIET_VARIABLES = {
    # MLflow's per-file download bars and INFO lines drown our one-line summaries.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # MLflow sets its logger's level when first imported, from this variable (default INFO);
    # the variable also reaches the processes started from here (model server, Spark workers).
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    # With a tracking server MLflow writes "View run ... at: <url>" and "View experiment at:"
    # to stdout as each run ends: `train` and `calibrate` printed them before the model URI,
    # their one line of stdout that `uri=$(anomaly-vae train ...)` takes, and `evaluate`
    # amid its metrics. The run id is in the summary already.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
# MLflow mirrors the tracking and registry URIs and the active experiment into these, for the
# processes it starts; they are the caller's too, as are those `quiet_mlflow` sets.
_CALLER_VARIABLES = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_EXPERIMENT_ID",
    *_QUIET_VARIABLES,
)


@contextlib.contextmanager
def tracking_for_call(tracking_uri: str | None, create: bool = True) -> Iterator[None]:
    """`configure_tracking(tracking_uri, create)`, and any experiment set, for the span, then
    the caller's MLflow settings again: a notebook's or job's own later runs went to the store
    and experiment that the last `train`, `evaluate` or model lookup had used, and MLflow's
    INFO lines and download bars stayed off (`quiet_mlflow`) after `train` or `load_model`.

    MLflow has no public way to unset a URI or the active experiment, so its module state is
    saved and put back as it was (None where the caller had set nothing)."""
    import mlflow
    import mlflow.tracking._model_registry.utils as registry_state
    import mlflow.tracking._tracking_service.utils as tracking_state
    import mlflow.tracking.fluent as fluent

    variables = {name: os.environ.get(name) for name in _CALLER_VARIABLES}
    tracking = tracking_state._tracking_uri
    registry = registry_state._registry_uri
    experiment = fluent._active_experiment_id
    level = logging.getLogger("mlflow").level
    try:
        configure_tracking(tracking_uri, create)
        yield
    finally:
        logging.getLogger("mlflow").setLevel(level)
        mlflow.set_tracking_uri(tracking)  # also resets MLflow's tracing, which follows it
        registry_state._registry_uri = registry
        fluent._active_experiment_id = experiment
        for name, value in variables.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def quiet_mlflow() -> None:
    """Keep MLflow, here and in the processes started from here, to what leaves our one-line
    summaries readable; every command needs it, also one that opens no tracking store
    (`serve` of a model folder). It leaves them so; `tracking_for_call` puts the caller's
    back once a library call is done."""
    for name, value in _QUIET_VARIABLES.items():
        os.environ.setdefault(name, value)
    import mlflow  # noqa: F401 - after the variables above, which it reads when first imported

    logging.getLogger("mlflow").setLevel(logging.WARNING)


def _refuse_in_memory(uri: str) -> None:
    """Refuse SQLAlchemy's in-memory SQLite stores, `sqlite://` and `sqlite:///:memory:`: each
    command is a process of its own, so `train` registered a model in a store gone once it
    exited, printed its URI all the same and left its artifacts (and a `:memory:.lock`) in the
    working folder; `score` of that URI then found no such model."""
    if uri.split("?", 1)[0] in ("sqlite://", "sqlite:///:memory:"):
        raise InputError(
            f"{uri}: an in-memory store keeps no run or model once the command ends; "
            f"give a file, such as {DEFAULT_TRACKING_URI}"
        )


def _refuse_a_path(uri: str) -> None:
    """Refuse a SQLite store given as a path (`mlruns/mlflow.db`, or `mlruns`, the folder that
    holds it) in one line giving its URI: MLflow read the path as MLflow 2's file store, and
    its refusal pointed to MLFLOW_ALLOW_FILE_STORE, the way to that store, not to this one."""
    if "://" in uri:
        return
    path = Path(uri)
    db = path / "mlflow.db" if path.is_dir() else path
    if db.suffix.lower() in _SQLITE_SUFFIXES and (db.is_file() or not path.is_dir()):
        raise InputError(
            f"{uri}: a path, not a tracking URI; for the SQLite store {db}, give "
            f"sqlite:///{db.resolve().as_posix()}"
        )


_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def _refuse_three_slashes_for_four(uri: str, db: Path) -> None:
    """Refuse `sqlite:///tmp/store/mlflow.db` where no store is but /tmp/store/mlflow.db is
    one: three slashes name a path under the working directory, and `train` made a new, empty
    store there, printing its model's URI as though registered in the one meant. The default
    store, and a path written as relative (./, ../), are what they say: a host with a store
    at /mlruns/mlflow.db (a tracking server's image) must not refuse every project's own."""
    written = uri[len("sqlite:///") :]
    if db.is_absolute() or written.startswith((".", "~")):  # ./store.db is relative, plainly
        return
    meant = Path("/", db)
    if meant.is_file():
        raise InputError(
            f"{uri}: names {db} under the working directory, where there is no store; the store "
            f"at {meant} is sqlite:///{meant.as_posix()}, with four slashes"
        )


def _refuse_non_sqlite(db: Path) -> None:
    """Refuse a file at the store's path that is not an SQLite database (a text file, a file
    overwritten by mistake): SQLAlchemy's "file is not a database" ended every command in a
    traceback. A missing or empty file is one SQLite makes into a database."""
    try:
        with db.open("rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise InputError(f"{db}: cannot read the tracking store ({exc.strerror})") from None
    if header and header != SQLITE_HEADER:
        raise InputError(f"{db}: not an SQLite database, so not an MLflow tracking store")


def _open_store(uri: str) -> None:
    """Refuse a store MLflow cannot open in one line: MLflow 3's refusal of a file store (a
    bare path such as MLflow 2's `./mlruns`, or `file:///...`) or of an unknown scheme ended
    `train` and `runs` in a traceback, and `score` in "model not found"; so did a tracking
    server that does not answer, after minutes of MLflow's retries, and a web server that
    answers but is not MLflow (`check_server_answers`)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    except MlflowException as exc:
        raise InputError(
            f"{uri}: MLflow cannot open this tracking store ({first_line(exc)})"
        ) from None
    except ImportError as exc:
        # A database store (postgresql://, mysql://, mssql://) whose SQLAlchemy driver is not
        # installed ended every command in a traceback, `score` in two.
        raise InputError(
            f"{uri}: MLflow cannot open this tracking store (its database driver is not "
            f"installed: {exc}); install it, or point at a tracking server (http://...)"
        ) from None
    if is_server_uri(uri):
        check_server_answers(uri)
    _check_databricks_credentials(uri)


def _check_databricks_credentials(uri: str) -> None:
    """Refuse a Databricks store (`databricks`, `databricks://<profile>`) whose credentials
    are not set: MLflow opens it without them, and the first call ended in a traceback whose
    message ran to eight sentences. MLflow's own lookup decides, so every kind of Databricks
    authentication it accepts passes; its warning on the way is silenced."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.databricks_utils import get_databricks_host_creds
    from mlflow.utils.uri import is_databricks_uri

    if not is_databricks_uri(uri):
        return
    try:
        with loggers_at(logging.ERROR, "mlflow.utils.databricks_utils"):
            get_databricks_host_creds(uri)
    except MlflowException:
        profile = uri.partition("://")[2]
        how = (
            f"add the profile to ~/.databrickscfg with `databricks auth login --profile {profile}`"
            if profile
            else "set DATABRICKS_HOST and DATABRICKS_TOKEN, or run `databricks auth login`"
        )
        raise InputError(
            f"{uri}: no Databricks credentials for this tracking store; {how}"
        ) from None


def use_experiment(name: str) -> str:
    """Activate (creating if needed) an experiment; with SQLite, artifacts sit beside the DB."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        experiment_id = _create_experiment(name)
    else:
        refuse_deleted(experiment)
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _create_experiment(name: str) -> str:
    """Create the experiment `name`; its id.

    Two commands started together (a sweep of `train`s on a new store) both found no
    experiment of that name and both created it: the second ended in MLflow's "already
    exists" traceback. It takes the one the first created."""
    import mlflow
    from mlflow.exceptions import MlflowException

    db = sqlite_file(mlflow.get_tracking_uri())
    location = None
    if db is not None:
        location = (db.parent / "artifacts" / _slug(name)).resolve().as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except MlflowException as exc:
        if not _already_exists(exc):
            raise
    return mlflow.get_experiment_by_name(name).experiment_id


def _already_exists(exc: MlflowException) -> bool:
    """Whether MLflow refused to create something because it exists; a tracking server may
    answer with either code, as MLflow's own registration allows."""
    from mlflow.protos.databricks_pb2 import ALREADY_EXISTS, RESOURCE_ALREADY_EXISTS, ErrorCode

    return exc.error_code in map(ErrorCode.Name, (RESOURCE_ALREADY_EXISTS, ALREADY_EXISTS))


def refuse_deleted(experiment: mlflow.entities.Experiment) -> None:
    """Refuse an experiment deleted in `mlflow ui`, which keeps its name until it is purged:
    `train`, `evaluate` and `calibrate` ended in MLflow's "Cannot set a deleted experiment"
    traceback, and `runs --experiment` said "no runs yet"."""
    if experiment.lifecycle_stage == "deleted":
        raise InputError(
            f"experiment '{experiment.name}' is deleted: restore it (mlflow experiments restore "
            f"--experiment-id {experiment.experiment_id}) or purge it (mlflow gc)"
        )


@contextlib.contextmanager
def tracked_run(run_name: str, parent_run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """`mlflow.start_run`, but a command stopped by the user leaves its run KILLED.

    MLflow's own context ends a run FAILED on any exception, so Ctrl-C read as a crash; and
    Lightning turns SIGTERM during a fit into SystemExit, which is no failure of the run
    either. FINISHED and FAILED stay MLflow's. Ctrl-C and SIGTERM (SystemExit(143)) come out
    as `Interrupted`, naming the run, for the command to say in one line. A process killed
    outright ends nothing: the run's tags name the process, so that
    `end_run_of_gone_process` can end it later.
    """
    import mlflow
    from mlflow.entities import RunStatus

    callers = mlflow.active_run()
    if callers is not None:
        # MLflow's own "already active ... call start_run with nested=True" named an option
        # that the caller of `train` or `evaluate` cannot pass.
        raise InputError(
            f"MLflow run {callers.info.run_id} is active in this thread: anomaly-vae logs a "
            f"run of its own; end that run (mlflow.end_run()) first"
        )
    with mlflow.start_run(run_name=run_name, parent_run_id=parent_run_id) as run:
        mlflow.set_tags({**_process_tags(), **_code_tags(run.data.tags)})
        killed = f"MLflow run {run.info.run_id} ended KILLED"
        try:
            yield run
        except (KeyboardInterrupt, SystemExit) as exc:
            mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
            if isinstance(exc, KeyboardInterrupt):
                raise Interrupted(signal.SIGINT, killed) from None
            if exc.code == 128 + signal.SIGTERM:
                raise Interrupted(signal.SIGTERM, killed) from None
            raise


def _process_tags() -> dict[str, str]:
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    machine = _this_machine()
    started = _start_ticks(os.getpid()) if machine else None
    if machine and started:
        tags[PROCESS_TAG] = f"{machine} {started}"
    return tags


def _this_machine() -> str | None:
    """This boot of this kernel and this process's pid namespace, or None where there is no
    Linux /proc to say. Two processes with the same value number their pids alike: the same
    pid is the same process, or one started later (another start time)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{boot} {namespace}"


def _start_ticks(pid: int) -> str | None:
    """When process `pid` started (clock ticks after boot), None where it has exited.

    Raises OSError where /proc hides the process (another user's, with `hidepid`)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    # The command name, in parentheses, may hold spaces and parentheses of its own.
    state, *fields = stat.rpartition(")")[2].split()
    return None if state in ("Z", "X") else fields[18]  # a zombie has exited already


def process_gone(tags: dict[str, str]) -> bool:
    """Whether the process that `tracked_run` recorded in a run's tags has certainly ended.

    Only a process of this host, this boot and this pid namespace can be checked: one that is
    not there, or whose pid another process has taken since, has ended. A run from another
    machine or container, or one that recorded no process (older runs, systems without /proc),
    is never judged."""
    host, pid, recorded = tags.get(HOST_TAG), tags.get(PID_TAG), tags.get(PROCESS_TAG)
    if host != socket.gethostname() or not pid or not pid.isdigit() or not recorded:
        return False
    machine, _, started = recorded.rpartition(" ")
    if machine != _this_machine() or int(pid) <= 0:
        return False
    try:
        os.kill(int(pid), 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # another user's process, which exists; its start time says whether it is ours
    try:
        return _start_ticks(int(pid)) != started
    except OSError:
        return False


def end_run_of_gone_process(run_id: str, tags: dict[str, str]) -> bool:
    """Mark a RUNNING run KILLED if `process_gone` is certain its process has ended.

    Its end time stays unknown (empty), as MLflow shows a run that never said when it ended; a
    tag says who marked it and when. Returns whether the run was marked: a store that cannot
    be written (read-only, a full disk, a server that grants reading only) keeps its status.
    """
    import datetime

    import mlflow
    from mlflow.entities import RunStatus
    from mlflow.exceptions import MlflowException

    if not process_gone(tags):
        return False
    client = mlflow.MlflowClient()
    # A run that ended itself between the caller's listing and the check above keeps its status.
    if client.get_run(run_id).info.status != RunStatus.to_string(RunStatus.RUNNING):
        return False
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    note = f"process {tags[PID_TAG]} on {tags[HOST_TAG]} had ended; marked KILLED at {now}"
    try:
        client.set_tag(run_id, ENDED_TAG, note)
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.KILLED))
    except MlflowException:
        return False
    return True


def _code_tags(tags: dict[str, str]) -> dict[str, str]:
    """The anomaly-vae version, and the git commit of its source when that is a checkout.

    MLflow takes `mlflow.source.git.commit` from the started script's folder: for the
    `anomaly-vae` command that is a virtual environment's bin/, outside any repository or
    ignored by it, so runs of different code looked alike. A commit MLflow found is kept.
    """
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

    from anomaly_vae import __version__

    # The package's own version, as detector.json records it: a source tree on sys.path that
    # pip did not install has no metadata to ask.
    code = {"anomaly_vae.version": __version__}
    if MLFLOW_GIT_COMMIT not in tags and (commit := source_commit()):
        code[MLFLOW_GIT_COMMIT] = commit
    return code


@functools.cache
def source_commit() -> str | None:
    """HEAD of the git checkout holding this package's source, if git tracks it there (an
    installed copy in site-packages may sit inside some other repository). Runs and benchmark
    results record it, so a figure can be traced to the code that produced it."""
    if source_git("ls-files", "--error-unmatch", Path(__file__).name) is None:
        return None
    return source_git("rev-parse", "HEAD")


def source_git(*args: str) -> str | None:
    """What `git <args>` prints (stripped) in this package's folder; None where git is missing,
    hangs or fails there."""
    try:
        done = subprocess.run(
            ["git", "-C", str(Path(__file__).parent), *args],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@dataclass(frozen=True)
class ModelLineage:
    """Where a model that a command read came from, as this tracking store knows it."""

    version: str | None = None  # '<name>/<version>', an alias resolved to its version
    model_id: str | None = None  # MLflow's logged model ('m-...')
    run_id: str | None = None  # the run that logged the model: training or calibration
    experiment_id: str | None = None  # that run's experiment


def model_lineage(model_uri: str, info: dict[str, Any]) -> ModelLineage:
    """The lineage of the model `model_uri` names now; `info` is its detector.json's `info`.

    An alias is resolved to the version it points at, so that an evaluation of
    `models:/x@champion` stays with that version after the alias moves. A local directory is
    traced through the run ids its detector.json holds. What this store does not hold (a model
    copied from another server, a deleted run) is left out.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    client = mlflow.MlflowClient()
    try:
        if model_uri.startswith("models:/"):
            resolved = get_model_name_and_version(client, model_uri)
            if len(resolved) == 1:  # models:/<model_id>, a logged model without a version
                return _run_lineage(client, client.get_logged_model(resolved[0]).source_run_id)
            name, number = resolved
            version = client.get_model_version(name, number)
            lineage = _run_lineage(client, version.run_id)
            model_id = _logged_model_id(client, version.model_id or version.source)
            return ModelLineage(f"{name}/{number}", model_id, lineage.run_id, lineage.experiment_id)
        if model_uri.startswith("runs:/"):
            return _run_lineage(client, model_uri.removeprefix("runs:/").split("/")[0])
        run_id = info.get("calibration_run_id") or info.get("run_id")
        return _run_lineage(client, run_id) if run_id else ModelLineage()
    except MlflowException:
        return ModelLineage()


def _run_lineage(client: mlflow.MlflowClient, run_id: str | None) -> ModelLineage:
    """The version and logged model a run registered, and the run itself if it is not deleted;
    nothing for no run (a version registered from a model's files, copied from elsewhere)."""
    if not run_id:
        return ModelLineage()
    run = client.get_run(run_id)
    if run.info.lifecycle_stage != "active":
        return ModelLineage()
    outputs = run.outputs.model_outputs if run.outputs else []
    return ModelLineage(
        run.data.tags.get("registered_model_version"),
        outputs[0].model_id if outputs else None,
        run_id,
        run.info.experiment_id,
    )


def _logged_model_id(client: mlflow.MlflowClient, source: str) -> str | None:
    """The id of the logged model a version's `source` (`models:/m-...`, or the id) names,
    if this store holds it; a version registered from a run's files has none."""
    from mlflow.exceptions import MlflowException

    model_id = source.removeprefix("models:/")
    if not model_id or "/" in model_id or "@" in model_id:
        return None
    try:
        return client.get_logged_model(model_id).model_id
    except MlflowException:
        return None


# The commands that read a model and log a run of it, by the run's kind.
_READING_COMMANDS = {"calibration": "calibrate", "evaluation": "evaluate"}


@dataclass(frozen=True)
class ModelReadingRun:
    """The run a command that reads a model logs, with the model's lineage and the data."""

    run: mlflow.ActiveRun
    lineage: ModelLineage
    dataset: mlflow.data.dataset.Dataset


def data_title(data: str | Path) -> str:
    """A file's name, or a folder's with its parent's: image folders are often named alike
    (`train`, `good`, `test`), and runs on `digits/train` and `tiles/train` were both `train train`,
    evaluations of `tex/test` and `mv/test` both `... on test`."""
    path = Path(data)
    return f"{path.parent.name}/{path.name}" if path.is_dir() and path.parent.name else path.name


@contextlib.contextmanager
def run_reading_model(
    kind: Literal["calibration", "evaluation"],
    model_uri: str,
    info: dict[str, Any],
    source: str,
    tracking_uri: str | None,
) -> Iterator[ModelReadingRun]:
    """`tracked_run` for a command that reads a model (`kind`: calibration, evaluation) and
    the file or folder `source`, in the experiment the model was trained in.

    The run is named for the version it read (`evaluate fraud/3 on x.parquet`), nested under
    the run that logged the model (the MLflow UI lists it beneath that training or calibration
    run), tagged with that version (`model_version`), and holds the logged model and the data
    (`log_data`) among its inputs. `info` is the model's detector.json `info`.
    """
    import mlflow
    from mlflow.entities import LoggedModelInput

    with tracking_for_call(tracking_uri):
        lineage = model_lineage(model_uri, info)
        use_parent_experiment(lineage, info.get("experiment", "anomaly-vae"))
        name = f"{_READING_COMMANDS[kind]} {lineage.version or model_uri} on {data_title(source)}"
        with tracked_run(name, parent_run_id=lineage.run_id) as run:
            mlflow.set_tags({"kind": kind, "model_uri": model_uri, "input": source})
            if lineage.version:
                mlflow.set_tag("model_version", lineage.version)
            if lineage.model_id:
                mlflow.log_input(model=LoggedModelInput(lineage.model_id))
            yield ModelReadingRun(run, lineage, log_data(source, kind))


def use_parent_experiment(lineage: ModelLineage, name: str) -> None:
    """Activate the experiment of the run a nested run goes beneath (`lineage.run_id`), else
    the one named `name` (the model's training experiment, from its detector.json). That name
    is a copy: once the experiment was renamed in `mlflow ui`, an evaluation made a new
    experiment of the old name and nested its run beneath a parent in the other one, where
    neither listed it."""
    import mlflow

    if lineage.experiment_id is None:
        use_experiment(name)
        return
    mlflow.set_experiment(experiment_id=lineage.experiment_id)


def log_data(path: str | Path, context: str) -> mlflow.data.dataset.Dataset:
    """Log the file or folder at `path` as an input of the active run, in `context`
    ("training", "evaluation", "calibration"): its absolute path and a digest of its bytes,
    which tell apart runs on different data, a file rewritten in place included. The `mlflow
    ui` shows them with the run; `search_runs` filters on `datasets.digest`."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    location = Path(path).resolve()
    with warnings.catch_warnings():
        # MLflow registers its local source twice, then warns that a path could be either.
        warnings.filterwarnings("ignore", "The specified dataset source can be", UserWarning)
        source = resolve_dataset_source(str(location))
    dataset = MetaDataset(source, name=location.name, digest=data_digest(location))
    mlflow.log_input(dataset, context=context)
    return dataset


def data_digest(path: Path) -> str:
    """The first 16 hex digits of a SHA-256 over a file's bytes, or over each file of a folder
    that the readers read (`_data_files`: its path there, size and bytes, in path order; each
    linked folder read once)."""
    return _files_digest(_data_files(path))[:16]


def _files_digest(files: Iterable[tuple[str | None, Path]]) -> str:
    """A SHA-256 over (path relative to a folder, or None for a lone file; file) pairs: each
    named path, its size and its bytes, read a megabyte at a time."""
    digest = hashlib.sha256()
    for relative, file in files:
        if relative is not None:
            digest.update(f"{relative}\0{file.stat().st_size}\0".encode())
        with file.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def _data_files(path: Path) -> list[tuple[str | None, Path]]:
    """(path relative to the folder, file) of the files the readers read in `path`: a folder's
    images (`image_files`) or a table's Parquet parts (`parquet_parts`), listed as they list
    them; (None, path) for a file."""
    from anomaly_vae.data.images import image_files, is_image_source
    from anomaly_vae.data.tables import parquet_parts

    if not path.is_dir():
        return [(None, path)]
    files = image_files(path) if is_image_source(path) else parquet_parts(path)
    return sorted((file.relative_to(path).as_posix(), file) for file in files if file.is_file())


def log_detector(
    detector_dir: Path,
    input_example: pd.DataFrame,
    output_example: pd.DataFrame,
    registered_model: str,
    promote: bool = True,
    step: int = 0,
) -> Registration:
    """Log the detector directory as a pyfunc model at the run's `step`, register it and,
    unless `promote` is False, move `champion` to it."""
    import mlflow
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types import ColSpec, Schema

    from anomaly_vae.detector import ARTIFACT_FILE

    with warnings.catch_warnings():
        # MLflow's hint that integer columns cannot hold missing values: features are declared
        # doubles (pipelines.train), which leaves the id columns, and those are never missing.
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer", UserWarning)
        inferred = infer_signature(input_example, output_example)
        # Columns the detector echoes back (a table's ids, an image's path) are left for the
        # detector to check: like `anomaly-vae score`, REST and Spark then take rows without ids.
        echoed = set(input_example.columns) & set(output_example.columns)
        inputs = [
            ColSpec(spec.type, spec.name, required=spec.name not in echoed)
            for spec in inferred.inputs.inputs
        ]
        signature = ModelSignature(Schema(inputs), inferred.outputs)
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(_PYFUNC_CODE),
            artifacts={DETECTOR_ARTIFACT: str(detector_dir)},
            signature=signature,
            input_example=input_example,
            pip_requirements=_pip_requirements(),
            step=step,
        )
    # A version without its tag, or without the alias asked for, would be a half-done command:
    # a signal from here on waits for the command to finish and report the version.
    hold_interruptions()
    description = version_description(json.loads((detector_dir / ARTIFACT_FILE).read_text()))
    version = _new_version(registered_model, info, description)
    registration = Registration(registered_model, version, promote)
    mlflow.set_tag("registered_model_version", registration.label)
    if promote:
        mlflow.MlflowClient().set_registered_model_alias(
            registered_model, CHAMPION_ALIAS, registration.version
        )
    return registration


def version_description(state: dict[str, Any]) -> str:
    """A registered version's description, from its detector.json: what kind of detector it
    is, the data it was trained or recalibrated on and how its threshold was chosen. Versions
    had none, and `mlflow ui`'s list of versions told one from another by number alone."""
    kind = "An image" if state.get("kind") == "image" else "A tabular"
    info = state.get("info") or {}
    if "calibrated_from" in info:
        origin = f"recalibrated on {info['calibration_data']} from {info['calibrated_from']}"
    else:
        origin = f"trained on {info['config']['data']['path']} for {info['epochs']} epochs"
    threshold = state.get("threshold")
    if threshold is None:
        return f"{kind} anomaly-vae detector {origin}, without a threshold."
    chosen = f"threshold {threshold['value']:.6g} by {threshold['strategy']}"
    return f"{kind} anomaly-vae detector {origin}; {chosen}."


def registered_state(name: str) -> tuple[dict[str, Any], str] | None:
    """The detector.json of registered model `name`'s version that tells what the model
    holds, and that version's URI: its `champion`, else its latest version. A model whose
    versions were all registered unpromoted (`calibrate` without --promote), or whose alias was
    removed, was taken for a new one, and a model of the other kind became its next version.

    A file of a few kilobytes; None where there is no such model or version, or it holds no
    anomaly-vae detector (registered by other means)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from anomaly_vae.detector import ARTIFACT_FILE

    client = mlflow.MlflowClient()
    try:
        try:
            version = client.get_model_version_by_alias(name, CHAMPION_ALIAS).version
            uri = f"models:/{name}@{CHAMPION_ALIAS}"
        except MlflowException:
            latest = client.search_model_versions(
                f"name = '{name}'", max_results=1, order_by=["version_number DESC"]
            )
            if not latest:
                return None
            version = latest[0].version
            uri = f"models:/{name}/{version}"
        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}/artifacts/{DETECTOR_ARTIFACT}/"
                f"{ARTIFACT_FILE}",
                dst_path=tmp,
            )
            state = json.loads(Path(path).read_text())
    except (MlflowException, OSError, ValueError):
        return None
    if not isinstance(state, dict) or not isinstance(state.get("kind"), str):
        return None
    return state, uri


@dataclass(frozen=True)
class Registration:
    """The model version `log_detector` registered, and whether `champion` moved to it."""

    name: str
    version: str
    promoted: bool

    @property
    def label(self) -> str:
        """'<name>/<version>', as runs are tagged with it."""
        return f"{self.name}/{self.version}"

    @property
    def uri(self) -> str:
        """`models:/<name>@champion` when the alias moved to this version, else the version's
        own `models:/<name>/<version>`."""
        if self.promoted:
            return f"models:/{self.name}@{CHAMPION_ALIAS}"
        return f"models:/{self.label}"


def _new_version(name: str, info: ModelInfo, description: str) -> str:
    """Register the logged model as a new version of `name` (made if new); the version.

    `log_model(registered_model_name=...)` printed "Registered model 'x' already exists.
    Creating a new version of this model..." and "Created version '2' of model 'x'" on every
    `train` and `calibrate`, between our own lines: with print(), which no log level of the
    `mlflow` logger reaches. The client's own calls print nothing.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    client = mlflow.MlflowClient()
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if not _already_exists(exc):
            raise
    version = client.create_model_version(
        name, info.model_uri, model_id=info.model_id, description=description
    ).version
    # The logged model's link to its version in `mlflow ui`, which log_model set too.
    links = json.dumps([{"name": name, "version": version}])
    client.set_logged_model_tags(info.model_id, {MLFLOW_MODEL_VERSIONS: links})
    return str(version)


def resolve_detector_dir(model_uri: str, tracking_uri: str | None = None) -> Path:
    """A local detector directory for a registry, run or local-path model URI."""
    if not _MODEL_URI.match(model_uri):
        return _local_detector_dir(model_uri)
    return _detector_in(Path(_download_model(model_uri, tracking_uri, _download_root())), model_uri)


@contextlib.contextmanager
def detector_dir_lookup(
    model_uri: str, tracking_uri: str | None = None
) -> Iterator[Callable[[], Path]]:
    """`resolve_detector_dir`, without MLflow where the local store answers, else on a second
    process while the caller imports torch.

    A registry lookup through MLflow imports it and its SQLAlchemy store, three to four seconds
    on one core, and needs nothing of torch, which takes about half as long: side by side,
    scoring a small file costs about what the slower one does. A version or alias in the
    SQLite store is read from its database directly (`stored_model_folder`), in milliseconds.
    A process that has loaded torch or MLflow already, and a local directory, gain nothing
    from a second process and resolve here. The callable waits for the directory and raises
    what the lookup raised.
    """
    stored = stored_model_folder(model_uri, _chosen_uri(tracking_uri))
    if stored is not None:
        yield lambda: _detector_in(stored, model_uri)
        return
    if not _MODEL_URI.match(model_uri) or {"torch", "mlflow"} & sys.modules.keys():
        resolved = resolve_detector_dir(model_uri, tracking_uri)
        yield lambda: resolved
        return
    with _download_beside(model_uri, tracking_uri) as download:
        yield lambda: _detector_in(Path(download()), model_uri)


@contextlib.contextmanager
def _download_beside(model_uri: str, tracking_uri: str | None) -> Iterator[Callable[[], str]]:
    """`_download_model` on a spawned process; here instead where processes cannot start.

    Some sandboxes and serverless runtimes cannot start one, and a lookup process can die for
    reasons of its own (memory): the lookup then runs here. Once it has answered, the process
    is stopped rather than awaited: its interpreter's teardown (MLflow, SQLAlchemy) took a
    second on one core, a fifth of scoring a small file.
    """
    import multiprocessing

    def here() -> str:
        return _download_model(model_uri, tracking_uri, _download_root())

    # spawn: a fresh interpreter, whatever the caller has loaded or started by then
    context = multiprocessing.get_context("spawn")
    try:
        answer, sender = context.Pipe(duplex=False)
        process = context.Process(
            target=_send_download,
            args=(sender, model_uri, tracking_uri, _download_root()),
            daemon=True,
        )
        with _main_module_hidden():
            process.start()
    except (OSError, NotImplementedError):
        yield here
        return
    sender.close()  # the child holds its own end: a child that dies leaves EOF here

    def result() -> str:
        try:
            succeeded, value = answer.recv()
        except EOFError:
            return here()
        if not succeeded:
            raise value
        return value

    try:
        yield result
    finally:
        process.terminate()
        process.join()
        answer.close()


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """An empty `__main__` while the lookup process starts, so that it imports only this module.

    Spawn runs the caller's main script again in the child (as `__mp_main__`): a script that
    called `load_model` at its top level, as the README's does, ran its first lines twice and
    printed multiprocessing's "bootstrapping phase" traceback; one read from stdin printed a
    FileNotFoundError. The lookup needs nothing of the caller's script."""
    import types

    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _send_download(sender: Connection, model_uri: str, tracking_uri: str | None, root: str) -> None:
    """The lookup process: `_download_model`'s folder, or the error it raised."""
    try:
        sender.send((True, _download_model(model_uri, tracking_uri, root)))
    except InputError as exc:
        sender.send((False, exc))


def _download_model(model_uri: str, tracking_uri: str | None, root: str) -> str:
    """The model's files, copied from the registry or run into a new folder under `root`."""
    with tracking_for_call(tracking_uri, create=False):
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            return mlflow.artifacts.download_artifacts(
                artifact_uri=model_uri, dst_path=tempfile.mkdtemp(dir=root)
            )
        except MlflowException as exc:
            raise InputError(
                f"model '{model_uri}' not found at {mlflow.get_tracking_uri()} "
                f"({first_line(exc)})" + _version_hint(model_uri)
            ) from None


# `models:/<name>` alone, which MLflow 3 reads as a logged model's id (`m-...`), not a name.
_BARE_NAME_URI = re.compile(r"^models:/(?!m-)([^/@]+)/?$")


def _version_hint(model_uri: str) -> str:
    """How to name a registered model: `models:/fraud` said only "Logged model with ID
    'fraud' not found", though the registry held fraud's versions."""
    match = _BARE_NAME_URI.match(model_uri)
    if match is None:
        return ""
    name = match.group(1)
    return (
        f"; a registered model needs a version or alias: models:/{name}/1, models:/{name}@champion"
    )


def _local_detector_dir(model_uri: str) -> Path:
    path = Path(model_uri).expanduser()
    if not path.exists():
        raise InputError(f"model '{model_uri}': no such directory or models:/, runs:/ URI")
    return _detector_in(path, model_uri)


@functools.cache
def _download_root() -> str:
    """One temporary folder per process for downloaded models, removed when it exits.

    A process replaced with `exec` runs no exit handlers: `resolve_model_dir` downloads no
    model here.
    """
    root = tempfile.mkdtemp(prefix="anomaly-vae-models-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def _detector_in(path: Path, model_uri: str) -> Path:
    from anomaly_vae.detector import ARTIFACT_FILE

    nested = (
        path / "artifacts" / DETECTOR_ARTIFACT,
        path / MODEL_ARTIFACT / "artifacts" / DETECTOR_ARTIFACT,
    )
    for candidate in (path, *nested):
        if (candidate / ARTIFACT_FILE).is_file():
            return candidate
    raise InputError(f"model '{model_uri}': no anomaly-vae detector found there")


def resolve_model_dir(model_uri: str, tracking_uri: str | None = None) -> Path:
    """A local MLflow model directory (MLmodel beside artifacts/detector) for a model URI.

    MLflow's scoring server and Spark UDFs load the pyfunc model, not the bare detector, so
    they need the directory `log_detector` wrote; resolving it here, once, means a server
    keeps the version an alias pointed at when it started. A model the store keeps as local
    files (a SQLite store's artifacts folder) is used where it is. Any other is downloaded
    into a per-user cache folder named by the model's content, reused by the next start:
    `serve` replaces its process with MLflow's server, so no copy it made could be removed,
    and each start used to leave one in the temporary folder.
    """
    if not _MODEL_URI.match(model_uri):
        return _model_dir_of(_local_detector_dir(model_uri), model_uri)
    stored = _stored_model_dir(model_uri, tracking_uri)
    if stored is not None:
        return stored
    root = _model_cache()
    if root is None:  # a copy in the temporary folder, as each start made before the cache
        return _model_dir_of(resolve_detector_dir(model_uri, tracking_uri), model_uri)
    _remove_stale_downloads(root)
    with tempfile.TemporaryDirectory(prefix=_DOWNLOAD_PREFIX, dir=root) as download:
        detector_dir = _detector_in(
            Path(_download_model(model_uri, tracking_uri, download)), model_uri
        )
        model_dir = _model_dir_of(detector_dir, model_uri)
        cached = root / _content_digest(model_dir)
        _move_into_cache(model_dir, cached, Path(download))
    return _model_dir_of(_detector_in(cached, model_uri), model_uri)


_DOWNLOAD_PREFIX = ".download-"
# Older than any download takes: another start's download in progress is left alone.
_STALE_DOWNLOAD_SECONDS = 24 * 3600


def _remove_stale_downloads(root: Path) -> None:
    """Remove the download folders of starts killed while downloading: a hidden copy of the
    model each, which nothing removed and `ls` of the cache did not show."""
    cutoff = time.time() - _STALE_DOWNLOAD_SECONDS
    for folder in root.glob(f"{_DOWNLOAD_PREFIX}*"):
        with contextlib.suppress(OSError):  # gone already: another start removed it
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder)


def _move_into_cache(model_dir: Path, cached: Path, scratch: Path) -> None:
    """Make `cached` the downloaded `model_dir`, unless a folder there still holds the files its
    name was made from (another start cached the same model). One whose files were deleted or
    changed since was served as it was, and `serve` failed on every start, naming no cache
    folder ("no anomaly-vae detector found there"): it is swapped for the fresh download, and
    the damaged one goes into `scratch`, removed with the download."""
    if cached.is_dir() and _content_digest(cached) == cached.name:
        return
    with contextlib.suppress(OSError):  # another process cached or swapped it first
        if cached.exists():
            cached.rename(scratch / "damaged")
        model_dir.rename(cached)


def _model_dir_of(detector_dir: Path, model_uri: str) -> Path:
    model_dir = detector_dir.parent.parent
    if detector_dir.parent.name != "artifacts" or not (model_dir / "MLmodel").is_file():
        raise InputError(
            f"model '{model_uri}': a bare detector directory, not an MLflow model; "
            "use its models:/ or runs:/ URI"
        )
    return model_dir


def _stored_model_dir(model_uri: str, tracking_uri: str | None) -> Path | None:
    """The model's own folder in the store, where the store keeps it as local files."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

    models = model_uri.startswith("models:")
    repository = ModelsArtifactRepository if models else RunsArtifactRepository
    try:
        with tracking_for_call(tracking_uri, create=False):
            location = repository.get_underlying_uri(model_uri)
    except MlflowException:
        return None  # the download says what is wrong, as for every other command
    # A run's `model` folder is empty in MLflow 3 (models are logged models): downloaded then.
    path = local_model_folder(location)
    return None if path is None else _model_dir_of(_detector_in(path, model_uri), model_uri)


def _model_cache() -> Path | None:
    """This user's folder of downloaded models: $XDG_CACHE_HOME/anomaly-vae/models; None where
    it cannot be made or written (a container's read-only or missing home directory)."""
    try:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(base) / "anomaly-vae" / "models"
        root.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError):  # RuntimeError: Path.home() found no home directory
        return None
    return root if os.access(root, os.W_OK | os.X_OK) else None


def _content_digest(folder: Path) -> str:
    """A name for the folder's files and their contents, the same wherever they came from."""
    files = (p for p in folder.rglob("*") if p.is_file())
    return _files_digest(sorted((p.relative_to(folder).as_posix(), p) for p in files))[:32]


def flatten_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config sections as MLflow params (`training.epochs` -> '60').

    A value is cut only at the longest MLflow stores: cut at 500 characters, a wide table's
    `data.categorical` or `data.drop` list lost its last columns without a word, and runs
    that differed there showed the same param in `mlflow ui`."""
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    params: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            params.update(flatten_params(value, f"{name}."))
        else:
            params[name] = str(value)[:MAX_PARAM_VAL_LENGTH]
    return params


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    names = ["torch", "numpy", "pandas", "pyarrow", "safetensors", "scikit-learn", "mlflow"]
    return [f"{name}=={version(name).split('+')[0]}" for name in names]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "experiment"
