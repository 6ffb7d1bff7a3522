#!/usr/bin/env bash
# Make sure MariaDB answers on 127.0.0.1:3306 for root without a password, starting it if
# needed. A fresh `apt-get install mariadb-server` (in a container, without systemd) neither
# starts the server nor lets root in over TCP, so this starts mariadbd itself and lets root
# log in with an empty password or over the socket.
set -euo pipefail

HOST=127.0.0.1
PORT=3306

answers() {
    mariadb --protocol=TCP -h "$HOST" -P "$PORT" -u root -e 'SELECT 1' >/dev/null 2>&1
}

if answers; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "MariaDB does not answer on $HOST:$PORT and only root can start it here" >&2
    exit 1
fi

if [ ! -d /var/lib/mysql/mysql ]; then
    echo "initialising the MariaDB data directory" >&2
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
fi
install -d -o mysql -g mysql /run/mysqld
if ! mariadb -u root -e 'SELECT 1' >/dev/null 2>&1; then
    echo "starting MariaDB on $HOST:$PORT" >&2
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- \
        --user=mysql --bind-address="$HOST" --port="$PORT" --log-error=/run/mysqld/error.log
fi

for _ in $(seq 1 60); do
    mariadb -u root -e 'SELECT 1' >/dev/null 2>&1 && break
    sleep 0.5
done
if ! mariadb -u root -e 'SELECT 1' >/dev/null 2>&1; then
    echo "MariaDB did not start; see /run/mysqld/error.log" >&2
    tail -n 20 /run/mysqld/error.log >&2 || true
    exit 1
fi

mariadb -u root -e "ALTER USER root@localhost IDENTIFIED VIA mysql_native_password \
    USING PASSWORD('') OR unix_socket"
if ! answers; then
    echo "MariaDB runs but root cannot log in over TCP on $HOST:$PORT" >&2
    exit 1
fi
echo "MariaDB answers on $HOST:$PORT" >&2
