#!/bin/bash
# lamplighter: stop this @WHAT@ once nobody has used it for a while.
# Rendered by `lamplighter lcc render @RENDERED_BY@` (lamplighter @VERSION@); attach it with
# `lamplighter lcc install`, or as the AWS samples show (create-studio-lifecycle-config + update-domain).
#
# It installs lamplighter into its own virtual environment and starts `lamplighter watch --platform
# @PLATFORM@` as a supervised background process: it outlives this script and any terminal, and it is
# restarted, with a growing delay, whenever it exits (but not after a configuration error: that is
# logged once and the agent stays off). No cron: the agent inherits this script's environment,
# including AWS_CONTAINER_CREDENTIALS_RELATIVE_URI, which boto3 needs inside a Studio app.
#
# It never blocks the app: SageMaker refuses to start an app whose lifecycle script fails or runs past
# 5 minutes, so every step is logged and this script exits 0 whatever happens; an install still going
# after INSTALL_BUDGET_S seconds carries on in the background and starts the agent when it is done.
#
# The execution role needs @ROLE_NEEDS@.
# Settings use the names of the AWS auto-stop-idle sample; any other lamplighter setting can be added
# below as `export LAMPLIGHTER_<NAME>=value` (see `lamplighter watch --help`).
set -uo pipefail

# User variables [update as needed]
export IDLE_TIME_IN_SECONDS="${IDLE_TIME_IN_SECONDS:-@IDLE_TIME_IN_SECONDS@}"  # stop after this many idle seconds
export IGNORE_CONNECTIONS="${IGNORE_CONNECTIONS:-@IGNORE_CONNECTIONS@}"  # True: open tabs on idle kernels count as idle
export SKIP_TERMINALS="${SKIP_TERMINALS:-@SKIP_TERMINALS@}"  # True: terminal activity does not count
@JUPYTER_SETTINGS@
# System variables [update only if needed]
export LAMPLIGHTER_PACKAGE="${LAMPLIGHTER_PACKAGE:-@PACKAGE@}"  # what pip installs
# Where from: an s3:// prefix or a folder made by `lamplighter lcc bundle` (wheels for Python 3.10 to
# 3.12, installed with --no-index), else the package index LAMPLIGHTER_INDEX_URL (a private mirror).
export LAMPLIGHTER_WHEELHOUSE="${LAMPLIGHTER_WHEELHOUSE:-@WHEELHOUSE@}"
export LAMPLIGHTER_INDEX_URL="${LAMPLIGHTER_INDEX_URL:-@INDEX_URL@}"
export PYTHON="${PYTHON:-@PYTHON@}"  # any Python >= 3.10; lamplighter gets its own venv
export SOLUTION_DIR="${SOLUTION_DIR:-/var/tmp/lamplighter}"  # not under the home folder: fresh at every app start
export LOG_FILE="${LOG_FILE:-@LOG_FILE@}"  # files in /var/log/apps/ are delivered to CloudWatch
export RESTART_DELAY_S="${RESTART_DELAY_S:-1}"  # first restart delay; doubles up to 300 s after quick exits
export INSTALL_BUDGET_S="${INSTALL_BUDGET_S:-@INSTALL_BUDGET_S@}"  # well inside SageMaker's 5 minutes

if [ ! -x "$PYTHON" ]; then
    PYTHON="$(command -v python3 || echo /usr/bin/python3)"
fi
mkdir -p "$SOLUTION_DIR" 2>/dev/null || SOLUTION_DIR="${TMPDIR:-/tmp}/lamplighter"
mkdir -p "$SOLUTION_DIR" "$(dirname "$LOG_FILE")" 2>/dev/null
# The app's log if this user may write it (directly or through sudo), else one beside the venv.
if touch "$LOG_FILE" 2>/dev/null; then
    export LAMPLIGHTER_LOG_SINK=direct
elif sudo -n touch "$LOG_FILE" 2>/dev/null; then
    export LAMPLIGHTER_LOG_SINK=sudo
else
    export LAMPLIGHTER_LOG_SINK=direct LOG_FILE="$SOLUTION_DIR/lamplighter.log"
fi

log() {
    local line
    line="$(date -u +%Y-%m-%dT%H:%M:%SZ) lamplighter-lcc: $*"
    printf '%s\n' "$line"
    if [ "$LAMPLIGHTER_LOG_SINK" = sudo ]; then
        printf '%s\n' "$line" | sudo -n tee -a "$LOG_FILE" >/dev/null
    else
        printf '%s\n' "$line" >>"$LOG_FILE"
    fi
} 2>/dev/null

# The install and the agent's start, written aside and moved into place (a running bash reads its
# script as it goes: never rewrite one in place), run in a session of their own.
cat >"$SOLUTION_DIR/setup.sh.new" <<'LAMPLIGHTER_SETUP'
#!/bin/bash
# Installs lamplighter and starts its supervisor; written by lamplighter's on-start script.
set -uo pipefail
sink() {
    if [ "$LAMPLIGHTER_LOG_SINK" = sudo ]; then sudo -n tee -a "$LOG_FILE" >/dev/null; else cat >>"$LOG_FILE"; fi
}
log() { printf '%s lamplighter-lcc: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" | sink; }
install_agent() {
    "$PYTHON" -m venv "$SOLUTION_DIR/venv" || return
    local pip=("$SOLUTION_DIR/venv/bin/python" -m pip install --quiet --disable-pip-version-check --retries 1 --timeout 20)
    case "$LAMPLIGHTER_WHEELHOUSE" in
        "")
            if [ -n "$LAMPLIGHTER_INDEX_URL" ]; then
                pip+=(--index-url "$LAMPLIGHTER_INDEX_URL")
            fi
            "${pip[@]}" "$LAMPLIGHTER_PACKAGE"
            ;;
        s3://*)
            mkdir -p "$SOLUTION_DIR/wheelhouse" || return
            if command -v aws >/dev/null 2>&1; then
                aws s3 cp --recursive --quiet "$LAMPLIGHTER_WHEELHOUSE" "$SOLUTION_DIR/wheelhouse" || return
            else
                # No AWS CLI in this image: the base environment's boto3 copies the wheels instead.
                "$PYTHON" - "$LAMPLIGHTER_WHEELHOUSE" "$SOLUTION_DIR/wheelhouse" <<'COPY_WHEELS' || return
import pathlib, sys, boto3
bucket, _, prefix = sys.argv[1][len("s3://"):].partition("/")
for page in boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
    for item in page.get("Contents", []):
        if item["Key"].endswith((".whl", ".json")):
            target = pathlib.Path(sys.argv[2]) / pathlib.PurePosixPath(item["Key"]).name
            boto3.client("s3").download_file(bucket, item["Key"], str(target))
COPY_WHEELS
            fi
            "${pip[@]}" --no-index --find-links "$SOLUTION_DIR/wheelhouse" "$LAMPLIGHTER_PACKAGE"
            ;;
        *)
            "${pip[@]}" --no-index --find-links "$LAMPLIGHTER_WHEELHOUSE" "$LAMPLIGHTER_PACKAGE"
            ;;
    esac
}
log "installing ${LAMPLIGHTER_PACKAGE} into ${SOLUTION_DIR}/venv with $("$PYTHON" -V 2>&1)"
install_agent 2>&1 | sink
status="${PIPESTATUS[0]}"
if [ "$status" -ne 0 ]; then
    log "the install failed (status ${status}, output above): the app runs without lamplighter"
    exit 0
fi
log "installed; starting the supervisor"
setsid "$SOLUTION_DIR/supervise.sh" </dev/null >/dev/null 2>&1 &
LAMPLIGHTER_SETUP

cat >"$SOLUTION_DIR/supervise.sh.new" <<'LAMPLIGHTER_SUPERVISOR'
#!/bin/bash
# Keeps `lamplighter watch --platform @PLATFORM@` running; written by lamplighter's on-start script.
set -u
exec 9>"$SOLUTION_DIR/supervise.lock"
if command -v flock >/dev/null 2>&1 && ! flock -n 9; then
    exit 0  # another supervisor already runs
fi
sink() {
    if [ "$LAMPLIGHTER_LOG_SINK" = sudo ]; then sudo -n tee -a "$LOG_FILE" >/dev/null; else cat >>"$LOG_FILE"; fi
}
say() { printf '%s lamplighter-supervise: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" | sink; }
say "supervising lamplighter watch (pid $$)"
delay="$RESTART_DELAY_S"
while true; do
    started="$(date +%s)"
    "$SOLUTION_DIR/venv/bin/lamplighter" watch --platform @PLATFORM@ 9>&- 2>&1 | sink
    status="${PIPESTATUS[0]}"
    if [ "$status" -eq 2 ]; then
        # Exit status 2 is a bad setting or argument (the line above says which): restarting cannot help.
        say "lamplighter watch stopped on a configuration error (status 2, see above); not restarting until the app restarts"
        exit 0
    fi
    if [ "$(($(date +%s) - started))" -ge 300 ]; then
        delay="$RESTART_DELAY_S"  # it ran for a while: not a crash loop
    fi
    say "lamplighter watch exited with status ${status}; restarting in ${delay}s"
    sleep "$delay"
    delay=$((delay * 2))
    if [ "$delay" -gt 300 ]; then
        delay=300
    fi
done
LAMPLIGHTER_SUPERVISOR

if ! { chmod +x "$SOLUTION_DIR/setup.sh.new" "$SOLUTION_DIR/supervise.sh.new" \
    && mv -f "$SOLUTION_DIR/setup.sh.new" "$SOLUTION_DIR/setup.sh" \
    && mv -f "$SOLUTION_DIR/supervise.sh.new" "$SOLUTION_DIR/supervise.sh"; }; then
    log "cannot write ${SOLUTION_DIR}; the app starts without lamplighter"
    exit 0
fi

nohup setsid "$SOLUTION_DIR/setup.sh" </dev/null >/dev/null 2>&1 &
setup_pid=$!
log "installing and starting lamplighter in the background (pid ${setup_pid}); log: ${LOG_FILE}"
tenths=0
while kill -0 "$setup_pid" 2>/dev/null && [ "$tenths" -lt $((INSTALL_BUDGET_S * 10)) ]; do
    sleep 0.1
    tenths=$((tenths + 1))
done
if kill -0 "$setup_pid" 2>/dev/null; then
    log "the install is still running after ${INSTALL_BUDGET_S}s; the app starts, and the agent once it is done"
fi
exit 0
