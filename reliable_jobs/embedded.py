"""An embedded PostgreSQL server for when no database is configured."""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

from .errors import ConfigurationError

logger = logging.getLogger(__name__)


def start_embedded_postgres(data_dir: Path | None = None, *, keep: bool = False) -> str:
    """Start PostgreSQL from the pgserver package and return its connection URI.

    The server listens on a Unix socket in `data_dir` (a new temporary
    directory by default) and stops when this process exits; its data is
    deleted then too unless `keep` is true.
    """
    try:
        with warnings.catch_warnings():
            # platformdirs warns at import that XDG_RUNTIME_DIR is unset on headless hosts.
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError:
        raise ConfigurationError(
            "no database address and the embedded PostgreSQL is not installed; set "
            "RELIABLE_JOBS_DSN or pass --dsn, or install it with "
            "pip install 'reliable_jobs[embedded]'"
        ) from None

    path = data_dir or Path(tempfile.mkdtemp(prefix="reliable_jobs-pg-"))
    # pgserver logs every command it runs at INFO.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = pgserver.get_server(  # type: ignore[attr-defined]
            path, cleanup_mode="stop" if keep else "delete"
        )
    uri: str = server.get_uri()
    logger.info("Started embedded PostgreSQL in %s", path, extra={"action": "embedded_start"})
    return uri
