"""Is the Hugging Face Hub usable right now? Decided fast, so that offline runs never hang.

Without a network the hub clients retry for ~25 s before failing; `hub_offline()` answers in
milliseconds: offline if `HF_HUB_OFFLINE` / `HF_DATASETS_OFFLINE` / `TRANSFORMERS_OFFLINE`
is set (read at call time, not at import), else one short HEAD request to the endpoint,
remembered for the rest of the process.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Iterator

logger = logging.getLogger(__name__)

_TRUE = {"1", "ON", "YES", "TRUE"}
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
PROBE_TIMEOUT_S = 3.0


def offline_requested() -> bool:
    """True if the environment asks for offline mode (checked now, not at import time)."""
    return any(os.environ.get(var, "").strip().upper() in _TRUE for var in _OFFLINE_VARS)


def _probe(answer: list[bool]) -> None:
    try:
        from huggingface_hub import constants
        from huggingface_hub.utils import get_session

        get_session().head(constants.ENDPOINT, timeout=PROBE_TIMEOUT_S)
        answer.append(True)
    except Exception as exc:  # DNS failure, refused, timeout, offline mode: all mean "no hub"
        logger.info("Hugging Face Hub not reachable (%s); using the local cache only", exc)


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """One HEAD request to the hub endpoint; any HTTP answer within ~3 s counts.

    Run in a daemon thread with a hard deadline, because a stalled DNS lookup is not covered
    by the HTTP client's timeout.
    """
    answer: list[bool] = []
    thread = threading.Thread(target=_probe, args=(answer,), daemon=True, name="hub-probe")
    thread.start()
    thread.join(PROBE_TIMEOUT_S + 1.0)
    if thread.is_alive():
        logger.info("Hugging Face Hub probe timed out; using the local cache only")
    return bool(answer)


def hub_offline() -> bool:
    """True if hub downloads must not be attempted (offline mode asked for, or no connection)."""
    return offline_requested() or not hub_reachable()


@contextlib.contextmanager
def offline_mode(enabled: bool = True) -> Iterator[None]:
    """Temporarily put `huggingface_hub` and `datasets` in offline mode (cache only), then restore.

    Both libraries read `HF_HUB_OFFLINE` once at import; this flips their module flags for the
    duration of the block so a cached dataset still loads and a missing one fails at once.
    """
    if not enabled:
        yield
        return
    from huggingface_hub import constants

    saved: list[tuple[object, str, object]] = [(constants, "HF_HUB_OFFLINE", constants.HF_HUB_OFFLINE)]
    try:
        import datasets.config as ds_config

        saved.append((ds_config, "HF_HUB_OFFLINE", ds_config.HF_HUB_OFFLINE))
    except ImportError:
        pass
    try:
        for module, attr, _ in saved:
            setattr(module, attr, True)
        yield
    finally:
        for module, attr, value in saved:
            setattr(module, attr, value)
