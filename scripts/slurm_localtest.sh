#!/usr/bin/env bash
# End-to-end test of the Slurm path on a real, one-node Slurm cluster on localhost.
#
#   sudo scripts/slurm_localtest.sh          # as root: installs slurm-wlm + munge with apt-get if missing
#   GWT_SLURM_KEEP=1 scripts/slurm_localtest.sh   # keep the work folder (logs, runs) afterwards
#
# Steps: install Debian's slurm-wlm and munge (apt-get) if absent; write a cgroup-free one-node
# slurm.conf for localhost (proctrack/linuxproc, task/none, no accounting) and a munge key in a
# fresh work folder; start munged, slurmctld and slurmd; then
#   1. sbatch slurm/pretrain_1node.sbatch: a tiny LLaMA pre-training run on the local C4 sample,
#      checked through its result.json;
#   2. a two-job Hydra multirun through hydra-submitit-launcher (hydra/launcher=slurm,
#      optimizer=adamw,gwt), both result.json checked;
#   3. pre-emption: a longer tiny run with two processes (torchrun on CPU, as the GPU path runs
#      accelerate launch) gets the pre-timeout signal (`scancel --batch --signal=USR1`, what
#      `#SBATCH --signal=B:USR1@300` sends), checkpoints, is requeued by its batch script, and
#      finishes by resuming: Restarts=1, "resumed from" in its log, metrics.jsonl steps 1..N
#      each once, result.json complete with world_size 2;
#   4. the same through submitit: a multirun job sent submitit's signal (USR2) is requeued by the
#      SlurmRequeue callback and resumes;
#   5. FSDP2 with two processes, both ways: slurm/pretrain_multinode.sbatch (one node, torchrun on
#      CPU) and a submitit job with two tasks (one gloo process group through the callback's
#      RANK/WORLD_SIZE/MASTER_*), each with distributed=fsdp2; result.json must say fsdp2,
#      world_size 2 and about half the optimizer state per rank.
# GWT_SLURM_STAGES="basic preempt multitask" selects the groups (1+2, 3+4, 5).
# Every daemon started here is stopped on exit (trap), after cancelling leftover jobs.
# Needs: root (daemons, apt-get), the project's virtual environment active or in .venv,
# GWT_DATA_DIR / GWT_TOKENIZER_DIR (default ../shared/{data,tokenizers}).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
WORK=${GWT_SLURM_WORK:-$(mktemp -d /tmp/gwt-slurm.XXXXXX)}
# two consecutive free TCP ports for slurmctld / slurmd (GWT_SLURM_PORT picks them by hand)
free_port_pair() {
    python3 -c '
import socket
for port in range(16917, 17917, 2):
    socks = [socket.socket() for _ in range(2)]
    try:
        for offset, sock in enumerate(socks):
            sock.bind(("127.0.0.1", port + offset))
    except OSError:
        continue
    finally:
        for sock in socks:
            sock.close()
    print(port)
    break
'
}
CTLD_PORT=${GWT_SLURM_PORT:-$(free_port_pair)}
NODE=$(hostname -s)
STEPS=${GWT_SLURM_STEPS:-3}                 # steps of the quick runs
PREEMPT_STEPS=${GWT_SLURM_PREEMPT_STEPS:-60} # steps of the runs that get the signal (enough that a fast machine cannot finish them before the signal lands)
export GWT_DATA_DIR=${GWT_DATA_DIR:-$(realpath -m "$REPO/../shared/data")}
export GWT_TOKENIZER_DIR=${GWT_TOKENIZER_DIR:-$(realpath -m "$REPO/../shared/tokenizers")}
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f "$REPO/.venv/bin/activate" ]; then
    . "$REPO/.venv/bin/activate"
fi
PY=$(command -v python)

log() { echo "[slurm-localtest $(date -u +%H:%M:%S)] $*"; }
fail() { echo "[slurm-localtest] FAIL: $*" >&2; exit 1; }

# ----------------------------------------------------------------------------- install
if [ "$(id -u)" != 0 ]; then
    fail "needs root (it installs packages and runs slurmctld/slurmd/munged); run it with sudo"
fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    log "installing slurm-wlm and munge with apt-get"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
fi

# ----------------------------------------------------------------------------- configure
mkdir -p "$WORK"/{state,spool,log,munge,runs}
chmod 755 "$WORK" "$WORK/munge"
dd if=/dev/urandom of="$WORK/munge.key" bs=1024 count=1 status=none
chmod 600 "$WORK/munge.key"
CPUS=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # the CPUs this machine gives us (nproc alone honours OMP_NUM_THREADS)
cat > "$WORK/slurm.conf" <<EOF
# One-node cluster on localhost, written by scripts/slurm_localtest.sh (no cgroups, no accounting).
ClusterName=gwtlocal
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$WORK/munge/munge.sock,cred_expire=10
SlurmctldPort=$CTLD_PORT
SlurmdPort=$((CTLD_PORT + 1))
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait=30
MinJobAge=600
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
export SLURM_CONF="$WORK/slurm.conf"

# ----------------------------------------------------------------------------- daemons
PIDS=()
cleanup() {
    local status=$?
    set +e
    if command -v squeue >/dev/null && [ -n "${CTLD_PID:-}" ]; then
        scancel --full --user=root >/dev/null 2>&1
        for _ in $(seq 60); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 1; done
    fi
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill "${PIDS[$i]}" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$pid" 2>/dev/null
    done
    if [ "$status" != 0 ]; then
        echo "---- slurmctld.log (tail)"; tail -n 30 "$WORK/log/slurmctld.log" 2>/dev/null
        echo "---- slurmd.log (tail)"; tail -n 30 "$WORK/log/slurmd.log" 2>/dev/null
    fi
    if [ "${GWT_SLURM_KEEP:-0}" = 1 ] || [ "$status" != 0 ]; then
        echo "[slurm-localtest] work folder kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    log "daemons stopped; exit status $status"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

munged -F --force --socket="$WORK/munge/munge.sock" --key-file="$WORK/munge.key" \
    --pid-file="$WORK/munge/munged.pid" --seed-file="$WORK/munge/munged.seed" \
    --log-file="$WORK/log/munged.log" >"$WORK/log/munged.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 20); do [ -S "$WORK/munge/munge.sock" ] && break; sleep 0.5; done
[ -S "$WORK/munge/munge.sock" ] || fail "munged did not start (see $WORK/log/munged.out)"
slurmctld -D -i >"$WORK/log/slurmctld.out" 2>&1 &
CTLD_PID=$!
PIDS+=($CTLD_PID)
slurmd -D -N "$NODE" >"$WORK/log/slurmd.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 60); do
    state=$(sinfo -h -n "$NODE" -o %t 2>/dev/null || true)
    [ "$state" = idle ] && break
    sleep 1
done
[ "$state" = idle ] || fail "node $NODE not idle (state '$state')"
log "cluster up: $(sinfo -h -o '%P %D %t %c CPUs')"

# ----------------------------------------------------------------------------- helpers
TINY=(model=llama_tiny data=c4_local logger=none "tokenizer=$GWT_TOKENIZER_DIR/t5-base"
      trainer.total_batch_size=4 trainer.micro_batch_size=4 trainer.seq_len=32 trainer.eval_tokens=512
      trainer.warmup_steps=0 trainer.checkpoint_every=0)
SBATCH_LOCAL=(--gpus-per-node=0 --cpus-per-task=1 --time=15)

job_state() { scontrol show job "$1" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' | head -n 1; }
job_field() { scontrol show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }

wait_job() {  # wait_job ID TIMEOUT_S: until the job has left the queue for good
    local id=$1 timeout=$2 state
    for _ in $(seq "$timeout"); do
        state=$(job_state "$id")
        case "$state" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|"") break ;; esac
        sleep 1
    done
    echo "$state"
}

check_result() {  # check_result RUN_DIR STEPS: result.json complete, metrics.jsonl steps 1..STEPS once each
    "$PY" - "$1" "$2" <<'EOF'
import json, math, sys
from pathlib import Path
run, steps = Path(sys.argv[1]), int(sys.argv[2])
result = json.loads((run / "result.json").read_text())
m = result["metrics"]
for key in ("eval_loss", "eval_ppl", "tokens_seen", "train_tokens_per_s", "optimizer_state_bytes"):
    assert key in m and math.isfinite(float(m[key])), f"{run}: metrics.{key} missing or not finite"
assert result["config"]["trainer"]["max_steps"] == steps and result.get("git_commit"), run
lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
train_steps = [l["step"] for l in lines if "loss" in l]
assert train_steps == list(range(1, steps + 1)), f"{run}: logged steps {train_steps}"
print(f"ok {run.name}: eval_ppl {m['eval_ppl']:.1f}, {int(m['tokens_seen'])} tokens, steps 1..{steps}")
EOF
}

wait_for_step() {  # wait_for_step RUN_DIR TIMEOUT_S: until metrics.jsonl has a first training step
    for _ in $(seq "$2"); do
        if [ -s "$1/metrics.jsonl" ] && grep -q '"loss"' "$1/metrics.jsonl"; then return 0; fi
        sleep 1
    done
    fail "no training step logged in $1 after $2 s"
}

want() { [[ " ${GWT_SLURM_STAGES:-basic preempt multitask} " == *" $1 "* ]]; }

# ----------------------------------------------------------------------------- 1. sbatch
if want basic; then
log "1. sbatch slurm/pretrain_1node.sbatch (llama_tiny, $STEPS steps)"
RUN1=$WORK/runs/sbatch_tiny
JOB1=$(sbatch --parsable "${SBATCH_LOCAL[@]}" --job-name=tiny --output="$WORK/log/tiny-%j.out" \
       slurm/pretrain_1node.sbatch "${TINY[@]}" optimizer=gwt trainer.max_steps="$STEPS" \
       trainer.eval_every="$STEPS" output_dir="$RUN1")

# ----------------------------------------------------------------------------- 2. submitit multirun
log "2. Hydra multirun through submitit: optimizer=adamw,gwt (runs while job $JOB1 runs)"
SWEEP=$WORK/runs/multirun
"$PY" train_llama.py -m hydra/launcher=slurm hydra.sweep.dir="$SWEEP" \
    hydra.launcher.gpus_per_node=null hydra.launcher.cpus_per_task=1 hydra.launcher.timeout_min=15 \
    "${TINY[@]}" optimizer=adamw,gwt trainer.max_steps="$STEPS" trainer.eval_every="$STEPS" \
    >"$WORK/log/multirun.out" 2>&1 || { tail -n 40 "$WORK/log/multirun.out"; fail "multirun failed"; }
for job in 0 1; do check_result "$SWEEP/$job" "$STEPS"; done

state=$(wait_job "$JOB1" 600)
[ "$state" = COMPLETED ] || { cat "$WORK"/log/tiny-*.out; fail "sbatch job $JOB1 ended $state"; }
check_result "$RUN1" "$STEPS"

fi

# ----------------------------------------------------------------------------- 3+4. pre-emption
if want preempt; then
# Both pre-emption cases run side by side (one CPU each).
log "3. pre-emption of an sbatch job with 2 processes (torchrun, gloo): USR1 to the batch shell ->" \
    "checkpoint -> requeue -> resume"
RUN3=$WORK/runs/preempt_sbatch
JOB3=$(GWT_CPU=1 GPUS_PER_NODE=2 sbatch --parsable "${SBATCH_LOCAL[@]}" --job-name=preempt \
       --output="$WORK/log/preempt-%j.out" slurm/pretrain_1node.sbatch "${TINY[@]}" trainer.total_batch_size=8 \
       optimizer=gwt trainer.max_steps="$PREEMPT_STEPS" trainer.eval_every="$PREEMPT_STEPS" output_dir="$RUN3")
log "4. pre-emption of a submitit job: USR2 -> SlurmRequeue callback -> checkpoint -> requeue -> resume"
SWEEP4=$WORK/runs/multirun_preempt
"$PY" train_llama.py -m hydra/launcher=slurm hydra.sweep.dir="$SWEEP4" \
    hydra.launcher.gpus_per_node=null hydra.launcher.cpus_per_task=1 hydra.launcher.timeout_min=15 \
    "${TINY[@]}" optimizer=gwt trainer.max_steps="$PREEMPT_STEPS" trainer.eval_every="$PREEMPT_STEPS" \
    >"$WORK/log/multirun_preempt.out" 2>&1 &
SWEEP_PID=$!

wait_for_step "$RUN3" 300
scancel --batch --signal=USR1 "$JOB3"
log "sent USR1 to the batch shell of job $JOB3 (as #SBATCH --signal=B:USR1@300 does)"
wait_for_step "$SWEEP4/0" 300
JOB4=$(squeue -h -o %i -n train_llama | head -n 1)
[ -n "$JOB4" ] || fail "no submitit job in the queue"
scancel --signal=USR2 "$JOB4"
log "sent USR2 to submitit job $JOB4 (as submitit's --signal=USR2@<signal_delay_s> does)"

state=$(wait_job "$JOB3" 900)
OUT3=$(cat "$WORK"/log/preempt-"$JOB3".out)
[ "$state" = COMPLETED ] || { echo "$OUT3"; fail "pre-empted job $JOB3 ended $state"; }
restarts=$(job_field "$JOB3" Restarts)
[ "${restarts:-0}" -ge 1 ] || { echo "$OUT3"; fail "job $JOB3 was not requeued (Restarts=$restarts)"; }
grep -q "stopped by signal at step" <<<"$OUT3" || { echo "$OUT3"; fail "job $JOB3 did not checkpoint on the signal"; }
grep -q "resumed from" <<<"$OUT3" || { echo "$OUT3"; fail "requeued job $JOB3 did not resume"; }
check_result "$RUN3" "$PREEMPT_STEPS"
"$PY" -c "import json,sys; w=json.load(open(sys.argv[1]))['metrics']['world_size']; assert w == 2, w; print('ok world_size', w)" \
    "$RUN3/result.json"
log "sbatch job $JOB3: $(grep -o 'stopped by signal at step [0-9]*' <<<"$OUT3" | head -n 1), Restarts=$restarts," \
    "$(grep -o 'resumed from .* at step [0-9]*' <<<"$OUT3" | head -n 1)"

wait "$SWEEP_PID" || { tail -n 40 "$WORK/log/multirun_preempt.out"; fail "pre-empted multirun failed"; }
LOG4=$(cat "$SWEEP4"/.submitit/*/*_log.out 2>/dev/null || true)
grep -q "stopped by signal at step" <<<"$LOG4" || { echo "$LOG4"; fail "submitit job did not checkpoint on the signal"; }
grep -q "requeueing job" <<<"$LOG4" || { echo "$LOG4"; fail "submitit job was not requeued"; }
grep -q "resumed from" <<<"$LOG4" || { echo "$LOG4"; fail "requeued submitit job did not resume"; }
restarts=$(job_field "$JOB4" Restarts)
[ "${restarts:-0}" -ge 1 ] || { echo "$LOG4"; fail "submitit job $JOB4 was not requeued (Restarts=$restarts)"; }
check_result "$SWEEP4/0" "$PREEMPT_STEPS"
log "submitit job $JOB4: $(grep -o 'stopped by signal at step [0-9]*' <<<"$LOG4" | head -n 1), Restarts=$restarts," \
    "$(grep -o 'resumed from .* at step [0-9]*' <<<"$LOG4" | head -n 1)"

fi

# ----------------------------------------------------------------------------- 5. FSDP2, two processes
check_fsdp2() {  # check_fsdp2 RUN_DIR: FSDP2 over 2 processes, each holding about half the optimizer state
    "$PY" - "$1" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
m = json.loads((run / "result.json").read_text())["metrics"]
assert m["distributed"] == "fsdp2" and m["world_size"] == 2, (run, m["distributed"], m["world_size"])
total, per_rank = int(m["optimizer_state_bytes"]), int(m["optimizer_state_bytes_per_rank"])
assert total > 0 and total <= 2 * per_rank < 1.1 * total, f"{run}: per-rank state {per_rank} of {total} bytes"
print(f"ok fsdp2 {run.name}: world_size 2, optimizer state {per_rank} of {total} bytes on the largest rank")
EOF
}

if want multitask; then
log "5a. sbatch slurm/pretrain_multinode.sbatch with distributed=fsdp2: 2 processes (torchrun, gloo) on one node"
RUN5=$WORK/runs/fsdp2_sbatch
JOB5=$(GWT_CPU=1 GPUS_PER_NODE=2 sbatch --parsable "${SBATCH_LOCAL[@]}" --nodes=1 --job-name=fsdp2 \
       --output="$WORK/log/fsdp2-%j.out" slurm/pretrain_multinode.sbatch "${TINY[@]}" trainer.total_batch_size=8 \
       distributed=fsdp2 precision=fp32 optimizer=gwt trainer.max_steps="$STEPS" trainer.eval_every="$STEPS" \
       output_dir="$RUN5")
log "5b. submitit job with 2 tasks and distributed=fsdp2: one gloo process group through the callback's" \
    "RANK/WORLD_SIZE/MASTER_* (runs while job $JOB5 runs)"
SWEEP5=$WORK/runs/multirun_2tasks
"$PY" train_llama.py -m hydra/launcher=slurm hydra.sweep.dir="$SWEEP5" hydra.launcher.tasks_per_node=2 \
    hydra.launcher.gpus_per_node=null hydra.launcher.cpus_per_task=1 hydra.launcher.timeout_min=15 \
    "${TINY[@]}" cpu=true trainer.total_batch_size=8 distributed=fsdp2 precision=fp32 optimizer=gwt \
    trainer.max_steps="$STEPS" trainer.eval_every="$STEPS" \
    >"$WORK/log/multirun_2tasks.out" 2>&1 || { tail -n 40 "$WORK/log/multirun_2tasks.out"; fail "2-task multirun failed"; }
check_result "$SWEEP5/0" "$STEPS"
check_fsdp2 "$SWEEP5/0"
state=$(wait_job "$JOB5" 600)
[ "$state" = COMPLETED ] || { cat "$WORK"/log/fsdp2-*.out; fail "FSDP2 sbatch job $JOB5 ended $state"; }
grep -q "torchrun --nnodes 1" "$WORK"/log/fsdp2-"$JOB5".out || { cat "$WORK"/log/fsdp2-*.out; fail "job $JOB5 not launched by torchrun"; }
check_result "$RUN5" "$STEPS"
check_fsdp2 "$RUN5"
fi

log "all Slurm checks passed"
