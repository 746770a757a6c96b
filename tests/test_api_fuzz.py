"""Property-based API test: schemathesis over every operation of /openapi.json.

A real uvicorn process, the real Redis fixture, real COGs and the tiny real TF model; a fixed
seed and a bounded number of examples per operation, so the cases are the same on every run.
Every answer must be no server error, with a status, media type, body and headers the
document declares, and invalid input must be rejected (service.testing.FUZZ_CHECKS). Generated
requests are steered onto the test storm (service.testing.steer_to_storm), or nearly all of
them would stop at "unknown storm" or "no scene here". bench/fuzz.py runs the same for longer,
with random seeds.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis

from service.testing import ServiceProcess, fuzz_config, steer_to_storm, storm_area

STORM = "alpha"
SEED = 14
#: Examples per operation in the fuzzing phase (the examples and coverage phases add their
#: own, fixed, cases): about 40 s for the whole document on 2 cores.
MAX_EXAMPLES = 120

schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(scope="module")
def service(served_data, redis_server, tmp_path_factory) -> Iterator[ServiceProcess]:
    redis_server.client().flushdb()
    log = tmp_path_factory.mktemp("fuzz") / "service.log"
    # A cold metric tile runs the model on up to `budget` analysis tiles: keep it small.
    with ServiceProcess(
        served_data.data_dir, redis_server.url, log_path=log, compute_budget="4"
    ) as proc:
        yield proc


@pytest.fixture(scope="module")
def api_schema(service) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(
        f"{service.url}/openapi.json", config=fuzz_config(SEED, MAX_EXAMPLES)
    )


@pytest.fixture(scope="module")
def area(service) -> tuple[tuple[float, float, float, float], tuple[int, int]]:
    return storm_area(service.url, STORM)


@pytest.fixture(autouse=True)
def _schemathesis_node_id(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's lazy schema reads ``node._nodeid``, which pytest 9.2 no longer has
    (it keeps ``_id``): give it one (it only names the operations in reports)."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@schema.parametrize()
def test_api_fuzz_no_server_error_and_schema_conformance(case, area, service):
    steer_to_storm(case.path_parameters, STORM, *area)
    case.call_and_validate()
    assert service.alive(), service.log_tail()
