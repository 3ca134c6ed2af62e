"""Locust scenarios for the gateway, picked with `--scenario NAME` (see loadtests/README.md).

Every scenario runs the same mixed traffic (`GatewayUser`) against model iris; all but `steady`
also run an admin controller greenlet that changes the routing while the load runs. Each request
is named after the variant that answered ("v2 infer b8 [green]") so locust's statistics split per
variant. With `--scenario-record PATH`, what the scenario saw is written there as JSON when the
test stops; `loadtests/run.py` judges and plots it.

Run it through `python loadtests/run.py SCENARIO`; for a single local process only (the recorder
and controller live in this process, so `--processes` or master/worker runs are not supported).
"""

import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
from locust import FastHttpUser, between, events, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.runners import WorkerRunner
from locust.stats import CSV_STATS_INTERVAL_SEC, StatsEntry
from scenarios.controllers import CONTROLLERS, Admin, Context
from scenarios.recorder import NO_VARIANT, Recorder
from scenarios.traffic import iris_rows, v1_body, v1_problem, v2_body, v2_problem

Problem = Callable[[int, Any, int], str | None]  # (status, answer, batch) -> why it failed
DEFAULT_RUN_TIME_S = 30.0  # controllers' schedule when locust runs without --run-time (web UI)
logger = logging.getLogger("scenario")


class ScenarioRun:
    """This process's recorder and controller greenlet, created on test_start."""

    recorder: Recorder | None = None
    controller: gevent.Greenlet | None = None


RUN = ScenarioRun()


@events.init_command_line_parser.add_listener
def _add_arguments(parser: LocustArgumentParser) -> None:
    parser.add_argument(
        "--scenario", choices=sorted(CONTROLLERS), default="steady",
        help="routing changes to make while the load runs",
    )  # fmt: skip
    parser.add_argument(
        "--scenario-record", default="", help="write what the scenario saw (JSON) here at the end"
    )


@events.test_start.add_listener
def _start(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None or isinstance(environment.runner, WorkerRunner):
        return  # the recorder needs the CLI options and every request in this one process
    run_time = float(options.run_time or DEFAULT_RUN_TIME_S)
    RUN.recorder = Recorder(options.scenario, bucket_s=0.5 if run_time <= 60 else 1.0)
    controller = CONTROLLERS[options.scenario]
    if controller is not None:
        context = Context(Admin(environment.host or ""), RUN.recorder, run_time, gevent.sleep)
        RUN.controller = gevent.spawn(_control, controller, context)


def _control(controller: Callable[[Context], None], context: Context) -> None:
    # An admin failure ends the controller, not the run: the record says so and run.py fails it.
    try:
        controller(context)
    except Exception as exc:
        logger.error("admin controller stopped: %s", exc)
        context.recorder.admin_errors.append(str(exc))


@events.request.add_listener
def _count(response: Any, response_time: float, exception: Any, **_: Any) -> None:
    if RUN.recorder is None:
        return
    headers = getattr(response, "headers", None) or {}
    revision = headers.get("x-gateway-revision")
    RUN.recorder.answer(
        headers.get("x-gateway-variant"),
        int(revision) if revision and revision.isdigit() else None,
        response_time,
        failed=exception is not None,
    )


@events.test_stop.add_listener
def _stop(environment: Environment, **_: Any) -> None:
    if RUN.recorder is None:
        return
    if RUN.controller is not None and not RUN.controller.dead:
        RUN.recorder.notes.append("controller still running at the end: steps were cut short")
        RUN.controller.kill(block=True, timeout=5)
    # Locust's CSV writer only writes once a second and not at exit; give it one more turn now
    # that every user has stopped, so <prefix>_stats.csv holds the final figures.
    gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.2)
    RUN.recorder.locust_stats = {
        "total": stats_figures(environment.stats.total),
        "entries": [stats_figures(e) for _, e in sorted(environment.stats.entries.items())],
    }
    record = getattr(environment.parsed_options, "scenario_record", "")
    if record:
        RUN.recorder.write(Path(record))


def stats_figures(entry: StatsEntry) -> dict[str, Any]:
    """Locust's final figures for one request name (or the total), as the HTML report has them."""
    has_data = entry.num_requests > 0
    figures = {
        "name": entry.name,
        "requests": entry.num_requests,
        "failures": entry.num_failures,
        "rps": round(entry.total_rps, 1),
    }
    for percent in (50, 95, 99):
        value = entry.get_response_time_percentile(percent / 100) if has_data else None
        figures[f"p{percent}_ms"] = value
    return figures


class GatewayUser(FastHttpUser):
    """Mixed inference traffic on iris: v2 infer with batches of 1, 8 and 32, and v1 predict."""

    wait_time = between(0.002, 0.02)  # a short think time, so 2 cores serve gateway and locust
    rng = random.Random()

    @task(6)
    def infer_one(self) -> None:
        self._infer(1)

    @task(3)
    def infer_eight(self) -> None:
        self._infer(8)

    @task(1)
    def infer_thirty_two(self) -> None:
        self._infer(32)

    @task(3)
    def predict(self) -> None:
        rows = iris_rows(4, self.rng)
        self._post("/v1/models/iris:predict", "v1 predict b4", v1_body(rows), len(rows), v1_problem)

    def _infer(self, batch: int) -> None:
        rows = iris_rows(batch, self.rng)
        self._post("/v2/models/iris/infer", f"v2 infer b{batch}", v2_body(rows), batch, v2_problem)

    def _post(self, path: str, name: str, body: Any, batch: int, problem: Problem) -> None:
        """POST, name the request after the answering variant, fail it on a bad answer."""
        with self.client.post(path, json=body, name=name, catch_response=True) as response:
            variant = (response.headers or {}).get("x-gateway-variant", NO_VARIANT)
            response.request_meta["name"] = f"{name} [{variant}]"
            if response.status_code == 0:  # no HTTP answer at all: say what went wrong instead
                reason: str | None = f"no answer: {getattr(response, 'error', None)!r}"
            else:
                reason = problem(response.status_code, _json(response), batch)
            if reason is None:
                response.success()
            else:
                response.failure(reason)


def _json(response: Any) -> Any:
    try:
        return response.json()
    except (ValueError, TypeError):
        return None
