#!/bin/sh
# Set up everything and run the whole test suite (as root: the integration
# tests build network namespaces). Extra arguments go to pytest.
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy translator publisher
exec .venv/bin/python -bb -m pytest "$@"
