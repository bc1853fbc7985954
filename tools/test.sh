#!/usr/bin/env bash
# The whole test suite: lint, then every test, against real Redis, TLS and the docker CLI.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash tools/install-deps.sh
# docker-py and requests must use the CA the tests give them, not the machine's bundle.
unset REQUESTS_CA_BUNDLE CURL_CA_BUNDLE
exec .venv/bin/tox -e lint,py311 -- "$@"
