#!/bin/bash
# Shared body of the sbatch scripts in this folder (sourced by them, not submitted itself).
#
# What it provides:
#   gwt_setup_env        cd to the repository, activate its virtual environment, export the
#                        rendezvous variables (MASTER_ADDR, MASTER_PORT, GPUS_PER_NODE, NUM_NODES,
#                        WORLD_SIZE) from the Slurm allocation.
#   gwt_launch_cmd ENTRY ARGS...
#                        prints nothing; fills the array GWT_CMD with the per-node command:
#                        `python ENTRY ...` for a single process, else `accelerate launch` with
#                        --num_machines/--machine_rank/--main_process_ip/--main_process_port
#                        taken from the Slurm environment (machine rank = SLURM_NODEID, read on
#                        each node inside the srun step).
#   gwt_run_requeueable  runs GWT_CMD as one srun step (one task per node) and handles the
#                        pre-timeout / pre-emption signal:
#                          Slurm sends USR1 to this batch shell (`#SBATCH --signal=B:USR1@<secs>`,
#                          or by hand: `scancel --batch --signal=USR1 <jobid>`); the trap
#                          forwards USR1 to the job step, where only the training processes
#                          act on it (launcher processes ignore it): they save a checkpoint and
#                          exit. The batch shell then runs `scontrol requeue $SLURM_JOB_ID`;
#                          the requeued job starts this script again with the same arguments
#                          and `resume=true` continues from the checkpoint.
#
# Environment knobs (all optional):
#   GWT_REPO          repository root (default: the directory sbatch was called from)
#   GWT_VENV          virtual environment to activate (default: the one active at submission,
#                     else $GWT_REPO/.venv if present)
#   GWT_MAX_REQUEUES  give up requeueing after this many restarts (default 20)
#   GPUS_PER_NODE     processes per node (default: GPUs Slurm gave this node, else 1)
#   MASTER_PORT       rendezvous port (default: 20000 + job id mod 20000)
#   GWT_ACCELERATE_ARGS  extra `accelerate launch` flags, e.g. "--dynamo_backend no" (not for
#                     precision: the run's `precision=` key sets it and overrides --mixed_precision)
#
# DDP and FSDP2 (`distributed=fsdp2` among the arguments) launch the same way: the launcher
# only starts one process per GPU with the rendezvous variables; the run forms the process group
# and, for FSDP2, shards the model itself.
#   GWT_CPU=1         CPU processes instead of GPUs (GPUS_PER_NODE per node, gloo): launched with
#                     torchrun and `cpu=true` (used by scripts/slurm_localtest.sh)

gwt_log() { echo "[gwt-slurm $(date -u +%H:%M:%S)] $*"; }

gwt_setup_env() {
    GWT_REPO=${GWT_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
    cd "$GWT_REPO" || { echo "GWT_REPO=$GWT_REPO: no such directory" >&2; exit 2; }
    # An environment already active at submission (sbatch exports it) is kept; else GWT_VENV or .venv.
    local venv=${GWT_VENV:-}
    [ -z "$venv" ] && [ -z "${VIRTUAL_ENV:-}" ] && venv=$GWT_REPO/.venv
    if [ -n "$venv" ] && [ -f "$venv/bin/activate" ]; then
        # shellcheck disable=SC1091
        . "$venv/bin/activate"
    fi
    export GWT_DATA_DIR=${GWT_DATA_DIR:-$(realpath -m "$GWT_REPO/../shared/data")}
    export GWT_TOKENIZER_DIR=${GWT_TOKENIZER_DIR:-$(realpath -m "$GWT_REPO/../shared/tokenizers")}
    NUM_NODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
    if [ -z "${GPUS_PER_NODE:-}" ]; then
        # SLURM_GPUS_ON_NODE is set when the job asked for GPUs (--gpus-per-node / --gres).
        GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-1}
    fi
    WORLD_SIZE=$((NUM_NODES * GPUS_PER_NODE))
    MASTER_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" 2>/dev/null | head -n 1)
    MASTER_ADDR=${MASTER_ADDR:-localhost}
    MASTER_PORT=${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}
    export NUM_NODES GPUS_PER_NODE WORLD_SIZE MASTER_ADDR MASTER_PORT
    gwt_log "job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0}: $NUM_NODES node(s) x $GPUS_PER_NODE" \
            "process(es), master $MASTER_ADDR:$MASTER_PORT, repo $GWT_REPO"
}

# Arguments that make every (re)start of this job continue the same run: a fixed output_dir
# (derived from the job id, which a requeued job keeps) and resume=true.
gwt_run_args() {
    GWT_ARGS=("$@")
    local has_output=0 arg
    for arg in "$@"; do
        case "$arg" in output_dir=*|+output_dir=*) has_output=1 ;; esac
    done
    if [ "$has_output" = 0 ]; then
        GWT_ARGS+=("output_dir=runs/slurm/${SLURM_JOB_NAME:-gwt}-${SLURM_JOB_ID:-local}")
    fi
    GWT_ARGS+=("resume=true")
}

gwt_launch_cmd() {
    local entry=$1
    shift
    gwt_run_args "$@"
    if [ "$WORLD_SIZE" -le 1 ]; then
        GWT_CMD=(python -u "$entry" "${GWT_ARGS[@]}")
        return
    fi
    # One launcher per node; SLURM_NODEID is expanded on that node (escaped below).
    # `trap '' USR1` before exec: the launcher (and its torchrun agent) inherit "ignore USR1", so
    # the forwarded signal stops only the training processes, which install their own handler.
    local quoted launcher
    quoted=$(printf ' %q' "${GWT_ARGS[@]}")
    if [ "${GWT_CPU:-0}" = 1 ]; then
        # CPU processes (gloo): torchrun, since `accelerate launch --cpu` starts one process only.
        launcher="torchrun --nnodes $NUM_NODES --node_rank \$SLURM_NODEID --nproc_per_node $GPUS_PER_NODE \
--master_addr $MASTER_ADDR --master_port $MASTER_PORT"
        quoted+=" cpu=true"
    else
        launcher="accelerate launch --multi_gpu ${GWT_ACCELERATE_ARGS:-} --num_machines $NUM_NODES \
--machine_rank \$SLURM_NODEID --num_processes $WORLD_SIZE --main_process_ip $MASTER_ADDR \
--main_process_port $MASTER_PORT --same_network"
    fi
    GWT_CMD=(bash -c "trap '' USR1; exec $launcher $(printf '%q' "$entry")$quoted")
}

gwt_run_requeueable() {
    GWT_PREEMPTED=0
    trap 'gwt_on_signal USR1' USR1
    trap 'gwt_on_signal TERM' TERM
    gwt_log "running: ${GWT_CMD[*]}"
    srun --kill-on-bad-exit=0 --ntasks-per-node=1 --nodes="$NUM_NODES" "${GWT_CMD[@]}" &
    GWT_STEP_PID=$!
    local status=0
    # `wait` returns early when a trapped signal arrives: keep waiting for the step to end.
    while true; do
        wait "$GWT_STEP_PID"
        status=$?
        kill -0 "$GWT_STEP_PID" 2>/dev/null || break
    done
    gwt_log "training step ended with status $status"
    if [ "$GWT_PREEMPTED" = 1 ]; then
        local restarts=${SLURM_RESTART_COUNT:-0}
        if [ "$restarts" -ge "${GWT_MAX_REQUEUES:-20}" ]; then
            gwt_log "not requeueing: already restarted $restarts times (GWT_MAX_REQUEUES)"
            exit 1
        fi
        gwt_log "requeueing job $SLURM_JOB_ID (restart $((restarts + 1))); it resumes from the last checkpoint"
        scontrol requeue "$SLURM_JOB_ID"
        exit 0
    fi
    exit "$status"
}

gwt_on_signal() {
    local sig=$1
    gwt_log "batch shell got SIG$sig: asking the training processes to checkpoint and exit"
    [ "$sig" = USR1 ] && GWT_PREEMPTED=1
    # Without --batch/--full, scancel signals the job steps only (not this shell).
    scancel --signal="$sig" "$SLURM_JOB_ID" 2>/dev/null || kill -s "$sig" "$GWT_STEP_PID" 2>/dev/null || true
}
