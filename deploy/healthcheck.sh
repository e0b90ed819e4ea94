#!/bin/sh
# Container health by role (GRADHEALTH_ROLE): the API answers /healthz; a worker answers a broker ping by its own name.
set -eu
role="${GRADHEALTH_ROLE:-api}"
host="$(hostname)"
case "$role" in
api)
    exec python -c "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:${GRADHEALTH_PORT:-8000}/healthz', timeout=5).status != 200)"
    ;;
worker)
    exec gradhealth worker --healthcheck --name "${GRADHEALTH_WORKER_NAME:-worker}@${host}"
    ;;
gpu-workers)
    n="$(cat "${GRADHEALTH_RUN_DIR:-/tmp}/gradhealth-gpu-workers" 2>/dev/null || echo 0)"
    [ "$n" -ge 1 ] || exit 1
    i=0
    while [ "$i" -lt "$n" ]; do
        gradhealth worker --healthcheck --name "gpu${i}@${host}" >/dev/null || exit 1
        i=$((i + 1))
    done
    ;;
*)
    exit 0  # one-shot roles (migrate, bootstrap) have nothing to probe
    ;;
esac
