#!/bin/sh
# Set up everything and run the revnat64 demo: a namespace lab with an IPv6-only
# client, a home router running revnat64 and an IPv4-only camera.
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh
exec .venv/bin/revnat64 demo "$@"
