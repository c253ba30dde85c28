"""The connection to the Hugging Face Hub that both the catalog and the weights downloads use.

It builds the `HfApi` client, names the endpoint, and turns huggingface_hub's and the
HTTP client's exceptions into `HubError` (and its subclasses) worded for the person at
the terminal. huggingface_hub is imported inside the functions (the CLI must start
fast, and `bawt-vllm up` never needs it). Each call builds a fresh `HfApi()`, so
`HF_ENDPOINT` / `huggingface_hub.constants.ENDPOINT` are read at call time, not
frozen at import.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

LIBRARY_NAME = "bawt-vllm"


class HubError(Exception):
    """Something the Hub said or did not say, worded for the person at the terminal."""


class RepoNotFoundError(HubError):
    """No such model repository (or it is private or gated and no token gives access)."""


class NoWeightsError(HubError):
    """The repository exists but has no weights vLLM can load."""


class MissingFileError(HubError):
    """The repository has no such file."""


def hub_api() -> Any:
    """A fresh `HfApi` (so the endpoint is read now); HubError when huggingface_hub is missing."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise HubError("huggingface_hub is not installed (pip install huggingface_hub)") from None
    return HfApi(library_name=LIBRARY_NAME)


def hub_endpoint() -> str:
    """The Hub URL huggingface_hub talks to now."""
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


@contextlib.contextmanager
def hub_errors(repo_id: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub's and the HTTP client's exceptions into HubError with a clear message."""
    from huggingface_hub.utils import (  # type: ignore[attr-defined, unused-ignore]  # re-exported implicitly
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    try:
        yield
    except GatedRepoError:
        raise HubError(
            f"'{repo_id}' is gated: accept its terms on the model page and log in (`hf auth login` or HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise RepoNotFoundError(
            f"no model repository '{repo_id}' on {hub_endpoint()} (check the spelling; "
            "private repositories need `hf auth login` or HF_TOKEN)"
        ) from None
    except HFValidationError as error:
        raise HubError(f"'{repo_id}' is not a valid repository id: {error}") from None
    except OfflineModeIsEnabled:
        raise HubError("huggingface_hub is in offline mode (HF_HUB_OFFLINE is set)") from None
    except LocalEntryNotFoundError as error:
        raise HubError(f"cannot reach {hub_endpoint()} and the files are not cached: {_first_line(error)}") from None
    except EntryNotFoundError as error:
        raise MissingFileError(f"'{repo_id}' has no such file: {_first_line(error)}") from None
    except HfHubHTTPError as error:
        raise HubError(f"the Hub refused the request: {_first_line(error)}") from None
    except Exception as error:
        if _is_network_error(error):
            raise HubError(f"cannot reach {hub_endpoint()}: {_first_line(error)}") from None
        raise


def _is_network_error(error: BaseException) -> bool:
    module = type(error).__module__.split(".")[0]
    return isinstance(error, ConnectionError | TimeoutError) or module in {"httpx", "httpx2", "requests", "urllib3"}


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
