"""The admin CLI against a real gateway: every command, its table, exit codes and refusals."""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support import GatewayProcess

pytestmark = pytest.mark.e2e


def cli(*args: str, token: str | None = "secret") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_ADMIN_TOKEN"}
    if token is not None:
        env["GATEWAY_ADMIN_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_every_admin_command(
    write_config: Callable[..., Path], start_gateway: Callable[..., GatewayProcess]
) -> None:
    """status, canary, promote, flip, shadow, rollback, history and abort work with --url after the subcommand."""
    gateway = start_gateway(write_config())
    url = ["--url", gateway.url]
    status = cli("status", *url)
    assert status.returncode == 0
    lines = status.stdout.splitlines()
    assert lines[0].split() == ["model", "rev", "live", "canary", "shadows", "sticky", "variants"]
    assert lines[2].split()[:4] == ["iris", "1", "blue", "-"]
    canary = cli("canary", "iris", "green", "0.25", *url)
    assert canary.returncode == 0 and "green@0.25" in canary.stdout
    assert "green@0.25" in cli("status", "iris", *url).stdout
    promote = cli("promote", "iris", *url)
    assert promote.returncode == 0 and promote.stdout.splitlines()[2].split()[:4] == [
        "iris",
        "3",
        "green",
        "-",
    ]
    assert "mlp" in cli("flip", "iris", "mlp", *url).stdout
    shadow = cli("shadow", "iris", "blue:0.5", "green", *url)
    assert shadow.returncode == 0 and "blue:0.5,green:1" in shadow.stdout
    rollback = cli("rollback", "iris", *url)
    assert rollback.returncode == 0 and rollback.stdout.splitlines()[2].split()[4] == "-"
    to_revision = cli("rollback", "iris", "--to", "1", *url)
    assert to_revision.returncode == 0 and to_revision.stdout.splitlines()[2].split()[:3] == [
        "iris",
        "7",
        "blue",
    ]
    history = cli("history", "iris", *url)
    assert [line.split()[0] for line in history.stdout.splitlines()[2:]] == [
        str(n) for n in range(1, 8)
    ]
    cli("canary", "iris", "green", "0.1", *url)
    assert cli("abort", "iris", *url).returncode == 0


def test_refusals_exit_non_zero_with_the_gateway_message(
    write_config: Callable[..., Path], start_gateway: Callable[..., GatewayProcess]
) -> None:
    """A refused change, a wrong token and an unreachable gateway exit non-zero with a message."""
    gateway = start_gateway(write_config())
    url = ["--url", gateway.url]
    refused = cli("flip", "iris", "blue", *url)
    assert refused.returncode != 0 and "409" in refused.stderr and "live already" in refused.stderr
    unknown = cli("canary", "iris", "nope", "0.1", *url)
    assert unknown.returncode != 0 and "no variant 'nope'" in unknown.stderr
    wrong = cli("status", *url, token="wrong")
    assert wrong.returncode != 0 and "401" in wrong.stderr
    bad_sample = cli("shadow", "iris", "green:lots", *url)
    assert bad_sample.returncode != 0 and "VARIANT:SAMPLE" in bad_sample.stderr
    away = cli("status", "--url", "http://127.0.0.1:9")
    assert away.returncode != 0 and "cannot reach" in away.stderr


def test_rollout_commands_draw_the_steps_and_watch_exits_by_phase(
    tmp_path: Path,
    write_config: Callable[..., Path],
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    """`rollout start --plan` draws the steps; pause and resume; a verb that does not fit is
    exit 1 with the gateway's reason; `--watch` ends 0 on promotion and 1 on an abort."""
    gateway = start_gateway(write_config())
    url = ["--url", gateway.url]
    plan = tmp_path / "plan.yaml"
    plan.write_text("variant: green\nsteps:\n  - {shadow: 1.0, duration: 1h}\n"
                    "  - {canary: 0.2, duration: 1h}\n")  # fmt: skip
    started = cli("rollout", "start", "iris", "--plan", str(plan), *url)
    assert started.returncode == 0, started.stderr
    assert "green -> Progressing" in started.stdout and "canary 0.2" in started.stdout
    assert cli("rollout", "pause", "iris", *url).returncode == 0
    status = cli("rollout", "status", "iris", *url)
    assert "Paused (paused by an operator)" in status.stdout
    again = cli("rollout", "pause", "iris", *url)
    assert again.returncode == 1 and "paused already" in again.stderr
    assert cli("rollout", "resume", "iris", *url).returncode == 0
    promoted = cli("rollout", "promote", "iris", "--full", "--watch", *url)
    assert promoted.returncode == 0 and "Healthy (green is live)" in promoted.stdout
    assert cli("status", "iris", *url).stdout.splitlines()[2].split()[2] == "green"
    plan.write_text("variant: blue\nsteps: [{canary: 0.1, duration: 1h}]\n")
    assert cli("rollout", "start", "iris", "--plan", str(plan), *url).returncode == 0
    aborted = cli("rollout", "abort", "iris", "--watch", *url)
    assert aborted.returncode == 1 and "Degraded" in aborted.stdout
    missing = cli("rollout", "start", "iris", "--plan", str(tmp_path / "none.yaml"), *url)
    assert missing.returncode != 0 and "cannot read the plan" in missing.stderr
    plan.write_text("")
    empty = cli("rollout", "start", "iris", "--plan", str(plan), *url)
    assert empty.returncode != 0 and "a plan is a mapping" in empty.stderr
    plan.write_text("variant: blue\nsteps: [{canary: 0.1, duration: 2021-01-01}]\n")
    dated = cli("rollout", "start", "iris", "--plan", str(plan), *url)
    assert dated.returncode == 1 and "steps.0.duration" in dated.stderr
    gone = cli("rollout", "status", "nope", "--watch", *url)
    assert gone.returncode == 1 and "404" in gone.stderr  # refused before watching
