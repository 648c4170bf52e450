"""Whether an MLflow tracking server answers, asked once and briefly before a command relies
on it.

MLflow retries a request that gets no answer 7 times with exponential backoff, each try waiting
up to 120 seconds for the server: pointed at a server that is down or mistyped, a command sat
silent for minutes and then ended in a traceback (`runs`, `train`) or in "model not found"
(`score`). Its own defaults stay in force for every later request, which may meet a rate
limit or a slow upload, where patience pays.

The question is a real MLflow request, so the answer also tells an MLflow server from another
HTTP server (a mistyped port, a path prefix left out): MLflow answers its API in JSON, even
an error, where anything else answered in HTML and every command ended in MLflow's traceback
of the page, or in "model not found".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from anomaly_vae.errors import InputError, first_line

if TYPE_CHECKING:
    import requests

# How the first request tries, unless the user set MLflow's own variable for it: one retry,
# each try waiting at most 5 seconds for the server. urllib3 waits no backoff before a first
# retry, so the second try follows the first at once (the factor would space later ones).
_PROBE_RETRIES = 1
_PROBE_BACKOFF_FACTOR = 1
_PROBE_TIMEOUT_S = 5
# The answers that say no server is there: a gateway's or load balancer's stand-ins for one.
# A rate limit (429), which MLflow also retries, is an answer: a server is there, and MLflow's
# own patience rides it out.
_NO_SERVER_CODES = frozenset({502, 503, 504})
# Every MLflow server answers it (GET since MLflow 1.x), and `anomaly-vae runs` asks it anyway.
_PROBE_ENDPOINT = "/api/2.0/mlflow/experiments/search"
# MLflow's own authentication refuses in plain text, not JSON: a server, but not the user's.
_REFUSED_CODES = frozenset({401, 403})


def is_server_uri(uri: str) -> bool:
    """Whether `uri` names a tracking server: an http or https URL, its scheme in any case, as
    MLflow reads it ("HTTP://host" is a server to MLflow too, which then retried for minutes)."""
    from urllib.parse import urlsplit

    return urlsplit(uri).scheme.lower() in ("http", "https")


def check_server_answers(uri: str) -> None:
    """Raise InputError naming `uri` where no MLflow server answers there: no HTTP server
    (refused, unknown host, no answer in time, or only a gateway's 502, 503 or 504), one that
    refuses the user's credentials, or one whose answer is not MLflow's JSON. An answer in
    MLflow's JSON, an error included, is left for the command's own requests to judge.

    A retry or timeout setting the user made through MLflow's environment variables
    (MLFLOW_HTTP_REQUEST_MAX_RETRIES, _BACKOFF_FACTOR, _TIMEOUT) applies to this request as
    to every other: they asked MLflow to wait that long.
    """
    from mlflow.environment_variables import (
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES,
        MLFLOW_HTTP_REQUEST_TIMEOUT,
    )
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    def unless_set(variable, value: int) -> int | None:  # noqa: ANN001 - MLflow's variable
        return None if variable.defined else value  # None: http_request reads the variable

    try:
        # The user's credentials, certificates and proxies apply as to any request, and a
        # path prefix in the URI (a gateway's /mlflow) as to MLflow's own requests.
        response = http_request(
            get_default_host_creds(uri),
            _PROBE_ENDPOINT,
            "GET",
            retry_codes=_NO_SERVER_CODES,
            max_retries=unless_set(MLFLOW_HTTP_REQUEST_MAX_RETRIES, _PROBE_RETRIES),
            backoff_factor=unless_set(MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, _PROBE_BACKOFF_FACTOR),
            timeout=unless_set(MLFLOW_HTTP_REQUEST_TIMEOUT, _PROBE_TIMEOUT_S),
            params={"max_results": 1},
        )
    except MlflowException as exc:
        raise InputError(
            f"{uri}: cannot reach the MLflow tracking server ({_root_cause(exc)})"
        ) from None
    _check_mlflow_answer(uri, response)


def _check_mlflow_answer(uri: str, response: requests.Response) -> None:
    """Refuse an answer to the probe that is not MLflow's JSON, saying what came instead."""
    if _is_json_object(response):
        return
    status = f"HTTP {response.status_code} {response.reason}".rstrip()
    if response.status_code in _REFUSED_CODES:
        raise InputError(
            f"{uri}: the tracking server refused the request ({status}); set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN"
        )
    kind = response.headers.get("Content-Type", "no content type").split(";")[0]
    raise InputError(
        f"{uri}: not an MLflow tracking server, or not its address: GET {_PROBE_ENDPOINT} "
        f"answered {status} ({kind}), not MLflow's JSON"
    )


def _is_json_object(response: requests.Response) -> bool:
    try:
        return isinstance(response.json(), dict)
    except ValueError:  # requests' JSONDecodeError is one
        return False


def _root_cause(exc: BaseException) -> str:
    """The innermost reason in the chain of exceptions that requests and urllib3 wrap around a
    failed connection ('Connection refused', 'Name or service not known', 'timed out'): the
    outer ones repeat the URL and urllib3's retry bookkeeping over several lines' worth."""
    seen: set[int] = set()
    inner: BaseException = exc
    while id(inner) not in seen:
        seen.add(id(inner))
        reason = getattr(inner, "reason", None)  # urllib3's MaxRetryError holds the last error
        wrapped = inner.args[0] if inner.args else None  # requests wraps urllib3's error
        chain = (inner.__cause__, inner.__context__, reason, wrapped)
        following = next((e for e in chain if isinstance(e, BaseException)), None)
        if following is None:
            break
        inner = following
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror
    return first_line(inner)
