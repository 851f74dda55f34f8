"""Schemathesis: requests generated from the OpenAPI spec never make the server fail."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from orchestrator import jobs
from orchestrator.api import create_app
from tests.conftest import settings_from_env
from tests.test_api import HORNPIPE
from tests.test_pipeline import JIG, REEL, WALTZ
from workers.runtime import close_contexts

TOKEN = "schema-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Random requests cannot guess an indexed piece id, a job id or a path under the catalogue,
# so only these must see some accepted requests (tests/test_api.py covers the rest).
REACHABLE = {"GET /search", "GET /failures", "GET /health", "GET /ready", "POST /ingest/files"}


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("catalogue")
    (root / "tunes.abc").write_text("\n".join([JIG, REEL, WALTZ, HORNPIPE]), encoding="utf-8")
    env = {
        "CLAMP_INDEX_DATA_DIR": str(tmp_path_factory.mktemp("state")),
        "CLAMP_INDEX_MODEL_DIR": str(tiny_model_dir),
    }
    config = settings_from_env(env, catalogue_roots=[root], torch_threads=2)
    close_contexts()
    jobs.ingest(config, [root])
    app = create_app(config, token=TOKEN)
    with TestClient(app):  # runs the lifespan: the store is open, the model loaded
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
    close_contexts()


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def test_no_request_makes_the_server_fail(api_schema: Any) -> None:
    statuses: dict[str, Counter[int]] = {}
    # Driven through Hypothesis directly: schemathesis's pytest plugin does not run on this
    # pytest, and one test over all operations keeps the index built once.
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 9
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=40,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any, seen: Counter[int]) -> None:
            response = case.call_and_validate(checks=CHECKS, headers=AUTH)
            seen[response.status_code] += 1

        run(seen=statuses.setdefault(operation.label, Counter()))
    summary = {label: dict(sorted(c.items())) for label, c in statuses.items()}
    print("schemathesis responses by operation:", json.dumps(summary, indent=1))
    assert set(statuses) == {op.label for op in operations}
    for label in REACHABLE:  # generated requests got through, not only refusals
        assert any(code < 300 for code in statuses[label]), summary
