#!/usr/bin/env bash
# Sets up the environment (scripts/setup.sh) and runs the whole test suite.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
.venv/bin/python -m pytest -ra "$@"
rc=$?
# pytest's 5 means no test ran: that is a failure here, not a pass.
[ $rc -eq 5 ] && { echo "no tests ran"; exit 1; }
exit $rc
