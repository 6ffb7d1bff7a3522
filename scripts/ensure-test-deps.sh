#!/usr/bin/env bash
# What `make test` (and `make bench`) need beyond the build: MariaDB (server and client)
# and wrk, then a MariaDB server answering on 127.0.0.1:3306 as root without a password;
# Debian's chromium and fonts for the browser tests (Playwright drives /usr/bin/chromium,
# never a browser of its own); the GridFTP server, globus-url-copy and the Globus FTP
# client library for the GridFTP tests; nginx and openssl for the front-end tests; curl
# for the file benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-build-deps.sh
scripts/ensure-packages.sh mariadb-server mariadb-client wrk chromium fonts-liberation \
    globus-gridftp-server-progs globus-gass-copy-progs libglobus-ftp-client2 nginx openssl \
    fonts-dejavu-core curl systemd
scripts/ensure-mariadb.sh
