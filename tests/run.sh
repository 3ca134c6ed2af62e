#!/usr/bin/env bash
# The whole test suite from a fresh clone: set up .venv, make sure redis-server exists (tests
# start their own on free ports), then lint, type-check and run every test tier.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  echo "== installing redis-server (tests start their own, never the one on :6379)"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq redis-server >/dev/null; fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  python3 -m venv .venv
fi
if ! command -v promtool >/dev/null 2>&1 && [ ! -x .venv/bin/promtool ]; then
  # Prometheus' rule checker, for the chart's alert rules: taken out of Debian's package
  # without installing it (no service is started).
  echo "== fetching promtool (Debian's prometheus package)"
  sudo_if() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  workdir="$(mktemp -d)"
  sudo_if apt-get update -qq
  (cd "$workdir" && apt-get download -qq prometheus >/dev/null && dpkg -x prometheus_*.deb root)
  cp "$workdir/root/usr/bin/promtool" .venv/bin/promtool
  rm -rf "$workdir"
fi
echo "== installing the project with its test extras"
.venv/bin/python -m pip install -q --upgrade pip
# --no-compile: bytecode is written when a module is first imported, for the modules the tests
# use; compiling every installed package up front took half of the install (27 s of 56).
.venv/bin/python -m pip install -q --no-compile -e '.[test,load]'

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
# Bytecode is written as modules are first imported (pip installed none, above), so the many
# processes the tests start (gateways, workers, locust, Ray, the MLflow server) compile each
# module once, not each at its own start, as they would where PYTHONDONTWRITEBYTECODE is set.
unset PYTHONDONTWRITEBYTECODE
# Any non-zero exit fails, including 5 (no tests collected).
.venv/bin/python -m pytest "$@"
