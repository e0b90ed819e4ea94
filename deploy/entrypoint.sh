#!/bin/sh
# gradhealth container entrypoint: one image, the role is the first argument (or GRADHEALTH_ROLE).
#   api            the REST API (GRADHEALTH_API_WORKERS processes, Prometheus multiprocess mode when > 1)
#   worker         one Celery worker on GRADHEALTH_QUEUES (default gpu,cpu), named <GRADHEALTH_WORKER_NAME>@<hostname>
#   gpu-workers    one worker process per visible GPU, each with CUDA_VISIBLE_DEVICES set to its own GPU
#   migrate        apply database migrations and exit (a Job or an init container)
#   bootstrap      create project $GRADHEALTH_BOOTSTRAP_PROJECT once and write its first key to $GRADHEALTH_BOOTSTRAP_KEY_FILE
#   anything else  run as a command (e.g. `gradhealth admin prune --older-than 30d`)
set -eu

role="${1:-${GRADHEALTH_ROLE:-api}}"
[ "$#" -gt 0 ] && shift
host="$(hostname)"

gpu_count() {
    # GRADHEALTH_GPUS wins; else the list the runtime exposed (NVIDIA_VISIBLE_DEVICES / CUDA_VISIBLE_DEVICES); else nvidia-smi.
    if [ -n "${GRADHEALTH_GPUS:-}" ]; then echo "$GRADHEALTH_GPUS"; return; fi
    if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L | grep -c '^GPU ' && return; fi
    python -c 'import torch; print(torch.cuda.device_count())'
}

case "$role" in
api)
    exec gradhealth api --host 0.0.0.0 --port "${GRADHEALTH_PORT:-8000}" --workers "${GRADHEALTH_API_WORKERS:-2}" "$@"
    ;;
worker)
    exec gradhealth worker --queues "${GRADHEALTH_QUEUES:-gpu,cpu}" --name "${GRADHEALTH_WORKER_NAME:-worker}@${host}" "$@"
    ;;
gpu-workers)
    n="$(gpu_count)"
    if [ "$n" -lt 1 ]; then
        echo "gradhealth: gpu-workers: no GPU visible (set GRADHEALTH_GPUS or run with the NVIDIA runtime)" >&2
        exit 2
    fi
    pids=""
    i=0
    while [ "$i" -lt "$n" ]; do
        CUDA_VISIBLE_DEVICES="$i" gradhealth worker --queues "${GRADHEALTH_QUEUES:-gpu}" --name "gpu${i}@${host}" "$@" &
        pids="$pids $!"
        i=$((i + 1))
    done
    echo "$n" > "${GRADHEALTH_RUN_DIR:-/tmp}/gradhealth-gpu-workers"  # the health check reads how many to ping
    trap 'kill -TERM $pids 2>/dev/null; wait; exit 143' TERM INT
    # One worker exiting takes the container down, so the orchestrator restarts it whole.
    while :; do
        for pid in $pids; do
            if ! kill -0 "$pid" 2>/dev/null; then
                wait "$pid" || status=$?
                echo "gradhealth: gpu worker $pid exited (${status:-0}); stopping the others" >&2
                kill -TERM $pids 2>/dev/null || true
                wait
                exit "${status:-1}"
            fi
        done
        sleep 5
    done
    ;;
migrate)
    exec gradhealth admin migrate
    ;;
bootstrap)
    project="${GRADHEALTH_BOOTSTRAP_PROJECT:-default}"
    keyfile="${GRADHEALTH_BOOTSTRAP_KEY_FILE:-/bootstrap/api_key}"
    if [ -s "$keyfile" ]; then
        echo "gradhealth: bootstrap: $keyfile exists; nothing to do" >&2
        exit 0
    fi
    umask 077
    if gradhealth admin create-project "$project" > "$keyfile.tmp"; then
        mv "$keyfile.tmp" "$keyfile"
        echo "gradhealth: bootstrap: project '$project' created; its admin key is in $keyfile" >&2
    else
        rm -f "$keyfile.tmp"
        exit 1
    fi
    ;;
*)
    exec "$role" "$@"
    ;;
esac
