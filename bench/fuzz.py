"""API fuzzing of the real service: schemathesis over every operation of /openapi.json.

Starts one uvicorn server (a private Redis server) over its own data directory under
bench/out/fuzz: the test suite's small storm and tiny real model (tests/conftest.py
make_served_data), built on first run. Then runs schemathesis (examples, coverage and
fuzzing phases, positive and negative cases) in rounds with fresh random seeds until at least
--cases requests were made, steering generated requests onto the storm as
tests/test_api_fuzz.py does, and checking every answer (service.testing.FUZZ_CHECKS). Each
server error and failed check is listed with the curl command that reproduces it.

Prints last ``server_errors=N failures=K cases=M`` (failures: answers failing any check,
server errors included).
"""

from __future__ import annotations

import argparse
import secrets
import time
from collections import Counter
from pathlib import Path
from typing import Any

import schemathesis
from _common import OUT, log, private_redis
from schemathesis.engine import Status, from_schema

from service.testing import ServiceProcess, fuzz_config, steer_to_storm, storm_area

STORM = "alpha"  # tests/conftest.py ServedData


class Tally:
    """What the hooks saw: requests, server errors, failed checks (with a curl each)."""

    def __init__(self, bounds: tuple[float, float, float, float], zooms: tuple[int, int]) -> None:
        self.bounds = bounds
        self.zooms = zooms
        self.cases = 0
        self.server_errors = 0
        self.failures = 0
        self.checks: Counter[str] = Counter()
        self.examples: dict[str, str] = {}


TALLY: Tally | None = None


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    assert TALLY is not None
    steer_to_storm(case.path_parameters, STORM, TALLY.bounds, TALLY.zooms)


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    assert TALLY is not None
    TALLY.cases += 1
    if response.status_code >= 500:
        TALLY.server_errors += 1
        TALLY.examples.setdefault(f"{response.status_code} {case.operation.label}", _curl(case))


@schemathesis.hook
def after_validate(context: Any, case: Any, response: Any, results: list[Any]) -> None:
    assert TALLY is not None
    failed = [r.name for r in results if r.status == Status.FAILURE]
    if failed:
        TALLY.failures += 1
        for name in failed:
            TALLY.checks[name] += 1
            TALLY.examples.setdefault(f"{name} {case.operation.label}", _curl(case))


def _curl(case: Any) -> str:
    try:
        return str(case.as_curl_command())
    except Exception as exc:  # a case that cannot be written as curl is still counted
        return f"(no curl: {exc})"


def served_data(root: Path) -> Path:
    """The data directory (storm ``alpha``, model ``tiny``), built once."""
    data_dir = root / "data"
    if not (data_dir / "storms" / STORM).is_dir():
        from tests.conftest import make_served_data  # _common put the repository on sys.path

        log(f"building {data_dir} (the test suite's storm and tiny model)")
        make_served_data(root)
    return data_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=3000, help="least requests (default 3000)")
    parser.add_argument(
        "--max-examples", type=int, default=100, help="fuzzing examples per operation and round"
    )
    parser.add_argument("--seed", type=int, default=None, help="first round's seed (random)")
    parser.add_argument("--budget", type=int, default=4, help="analysis tiles a request computes")
    parser.add_argument("--workers", type=int, default=2, help="concurrent schemathesis workers")
    args = parser.parse_args()

    global TALLY
    root = OUT / "fuzz"
    data_dir = served_data(root)
    seed = args.seed if args.seed is not None else secrets.randbits(64)
    started = time.monotonic()
    with (
        private_redis() as redis_url,
        ServiceProcess(
            data_dir, redis_url, log_path=root / "service.log", compute_budget=str(args.budget)
        ) as service,
    ):
        TALLY = Tally(*storm_area(service.url, STORM))
        round_ = 0
        while TALLY.cases < args.cases:
            round_ += 1
            config = fuzz_config(seed, args.max_examples, workers=args.workers)
            schema = schemathesis.openapi.from_url(f"{service.url}/openapi.json", config=config)
            for _event in from_schema(schema).execute():
                pass
            log(
                f"round {round_} seed={seed}: cases={TALLY.cases} "
                f"server_errors={TALLY.server_errors} failures={TALLY.failures}"
            )
            if not service.alive():
                log(f"the service died: {service.log_tail()}")
                break
            seed = secrets.randbits(64)
    for what, curl in sorted(TALLY.examples.items()):
        log(f"{what}\n    {curl}")
    if TALLY.checks:
        log("failed checks: " + ", ".join(f"{k}={v}" for k, v in TALLY.checks.most_common()))
    log(f"{time.monotonic() - started:.0f} s")
    print(f"server_errors={TALLY.server_errors} failures={TALLY.failures} cases={TALLY.cases}")


if __name__ == "__main__":
    main()
