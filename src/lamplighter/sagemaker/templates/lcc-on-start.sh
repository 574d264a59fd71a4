#!/bin/bash
# lamplighter: stop this SageMaker Studio @APP_TYPE@ app once nobody has used it for a while.
# Rendered by `lamplighter lcc render --app-type @APP_TYPE@` (lamplighter @VERSION@); attach it with
# `lamplighter lcc install`, or as the AWS samples show (create-studio-lifecycle-config + update-domain).
#
# It installs lamplighter into its own virtual environment and starts `lamplighter watch --platform
# sagemaker` as a supervised background process: it outlives this script and any terminal, and it is
# restarted, with a growing delay, whenever it exits. No cron: the agent inherits this script's
# environment, including AWS_CONTAINER_CREDENTIALS_RELATIVE_URI, which boto3 needs to call DeleteApp.
#
# The execution role needs sagemaker:DeleteApp (and sagemaker:DescribeApp to verify the stop).
# Settings use the names of the AWS auto-stop-idle sample; any other lamplighter setting can be added
# below as `export LAMPLIGHTER_<NAME>=value` (see `lamplighter watch --help`).
set -euo pipefail

# User variables [update as needed]
export IDLE_TIME_IN_SECONDS="${IDLE_TIME_IN_SECONDS:-@IDLE_TIME_IN_SECONDS@}"  # stop after this many idle seconds
export IGNORE_CONNECTIONS="${IGNORE_CONNECTIONS:-@IGNORE_CONNECTIONS@}"  # True: open tabs on idle kernels count as idle
export SKIP_TERMINALS="${SKIP_TERMINALS:-@SKIP_TERMINALS@}"  # True: terminal activity does not count
@JUPYTER_SETTINGS@
# System variables [update only if needed]
LAMPLIGHTER_PACKAGE="${LAMPLIGHTER_PACKAGE:-@PACKAGE@}"  # what pip installs
# Internet-free (VPC-only) domains: an s3:// prefix or a folder holding lamplighter's wheels and its
# dependencies' (pip download); empty means PyPI.
LAMPLIGHTER_WHEELHOUSE="${LAMPLIGHTER_WHEELHOUSE:-@WHEELHOUSE@}"
PYTHON="${PYTHON:-/opt/conda/bin/python}"  # any Python >= 3.10; lamplighter gets its own venv
export SOLUTION_DIR="${SOLUTION_DIR:-/var/tmp/lamplighter}"  # not under the home folder: fresh at every app start
export LOG_FILE="${LOG_FILE:-@LOG_FILE@}"  # files in /var/log/apps/ are delivered to CloudWatch
export RESTART_DELAY_S="${RESTART_DELAY_S:-1}"  # first restart delay; doubles up to 300 s after quick exits

log() { printf '%s lamplighter-lcc: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"; }

if [ ! -x "$PYTHON" ]; then
    PYTHON="$(command -v python3)"
fi
mkdir -p "$SOLUTION_DIR"
log "installing ${LAMPLIGHTER_PACKAGE} into ${SOLUTION_DIR}/venv"
"$PYTHON" -m venv "$SOLUTION_DIR/venv"
pip_install=("$SOLUTION_DIR/venv/bin/python" -m pip install --quiet --disable-pip-version-check)
case "$LAMPLIGHTER_WHEELHOUSE" in
    "")
        "${pip_install[@]}" "$LAMPLIGHTER_PACKAGE"
        ;;
    s3://*)
        mkdir -p "$SOLUTION_DIR/wheelhouse"
        if command -v aws >/dev/null 2>&1; then
            aws s3 cp --recursive --quiet "$LAMPLIGHTER_WHEELHOUSE" "$SOLUTION_DIR/wheelhouse"
        else
            # No AWS CLI in this image: the base environment's boto3 copies the wheels instead.
            "$PYTHON" - "$LAMPLIGHTER_WHEELHOUSE" "$SOLUTION_DIR/wheelhouse" <<'COPY_WHEELS'
import pathlib, sys, boto3
bucket, _, prefix = sys.argv[1][len("s3://"):].partition("/")
for page in boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
    for item in page.get("Contents", []):
        if item["Key"].endswith((".whl", ".tar.gz")):
            target = pathlib.Path(sys.argv[2]) / pathlib.PurePosixPath(item["Key"]).name
            boto3.client("s3").download_file(bucket, item["Key"], str(target))
COPY_WHEELS
        fi
        "${pip_install[@]}" --no-index --find-links "$SOLUTION_DIR/wheelhouse" "$LAMPLIGHTER_PACKAGE"
        ;;
    *)
        "${pip_install[@]}" --no-index --find-links "$LAMPLIGHTER_WHEELHOUSE" "$LAMPLIGHTER_PACKAGE"
        ;;
esac

# The supervisor: one instance per app (a lock), restarts the agent whenever it exits. Written aside
# and moved into place: a running bash reads its script as it goes, so never rewrite it in place.
cat >"$SOLUTION_DIR/supervise.sh.new" <<'LAMPLIGHTER_SUPERVISOR'
#!/bin/bash
# Keeps `lamplighter watch --platform sagemaker` running; written by lamplighter's on-start script.
set -u
exec 9>"$SOLUTION_DIR/supervise.lock"
if command -v flock >/dev/null 2>&1 && ! flock -n 9; then
    exit 0  # another supervisor already runs
fi
mkdir -p "$(dirname "$LOG_FILE")" 2>/dev/null || true
if touch "$LOG_FILE" 2>/dev/null; then
    sink() { cat >>"$LOG_FILE"; }
elif sudo -n true 2>/dev/null; then
    sink() { sudo -n tee -a "$LOG_FILE" >/dev/null; }
else
    LOG_FILE="$SOLUTION_DIR/lamplighter.log"
    sink() { cat >>"$LOG_FILE"; }
fi
delay="$RESTART_DELAY_S"
while true; do
    started="$(date +%s)"
    "$SOLUTION_DIR/venv/bin/lamplighter" watch --platform sagemaker 9>&- 2>&1 | sink
    status="${PIPESTATUS[0]}"
    if [ "$(($(date +%s) - started))" -ge 300 ]; then
        delay="$RESTART_DELAY_S"  # it ran for a while: not a crash loop
    fi
    printf '%s lamplighter-supervise: lamplighter watch exited with status %s; restarting in %ss\n' \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$status" "$delay" | sink
    sleep "$delay"
    delay=$((delay * 2))
    if [ "$delay" -gt 300 ]; then
        delay=300
    fi
done
LAMPLIGHTER_SUPERVISOR
chmod +x "$SOLUTION_DIR/supervise.sh.new"
mv -f "$SOLUTION_DIR/supervise.sh.new" "$SOLUTION_DIR/supervise.sh"

nohup setsid "$SOLUTION_DIR/supervise.sh" </dev/null >/dev/null 2>&1 &
log "lamplighter watch started under supervision (pid $!); log: ${LOG_FILE}"
