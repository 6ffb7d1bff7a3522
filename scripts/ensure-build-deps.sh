#!/usr/bin/env bash
# What `pip install -e .` needs on Debian 12: a venv-capable Python 3.11+ and the headers
# and tools that mysqlclient compiles against.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-packages.sh python3 python3-venv python3-dev build-essential pkg-config \
    libmariadb-dev
