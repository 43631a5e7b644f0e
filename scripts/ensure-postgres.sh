#!/usr/bin/env bash
# Start the machine's PostgreSQL cluster if it is not answering on 127.0.0.1:5432.
set -euo pipefail
ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ! command -v pg_isready >/dev/null 2>&1; then
  echo "error: PostgreSQL client tools not found; install PostgreSQL (Debian: apt-get install postgresql) so the database tests can run" >&2
  exit 1
fi
ready && exit 0
echo "PostgreSQL is down; starting the local cluster" >&2
version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
if [ -z "$version" ]; then
  echo "error: no PostgreSQL cluster under /etc/postgresql to start" >&2
  exit 1
fi
pg_ctlcluster --skip-systemctl-redirect "$version" main start
for _ in $(seq 1 30); do ready && exit 0; sleep 1; done
echo "error: PostgreSQL did not answer on 127.0.0.1:5432 within 30 s" >&2
exit 1
