#!/usr/bin/env bash
# Create the user `admin` with a random password, printed once. Does nothing if the user
# exists already (iceprod-server add-user exits with 3 then).
set -euo pipefail
DATA_DIR=${1:-var}
BIN=${BIN:-.venv/bin}

password=$("$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(12))')
rc=0
out=$(printf '%s\n' "$password" | "$BIN/iceprod-server" add-user admin --admin \
      --password-stdin --data-dir "$DATA_DIR" 2>&1) || rc=$?
case $rc in
    0)  echo
        echo "  admin account: user admin, password $password"
        echo "  (shown only now: write it down)"
        echo ;;
    3)  echo "user admin exists already" ;;
    *)  echo "$out" >&2
        exit $rc ;;
esac
