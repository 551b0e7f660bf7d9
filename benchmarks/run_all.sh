#!/usr/bin/env bash
# Install the load tools the benchmarks need (dnsperf, dnsmasq, wrk) when missing, then run the
# benchmarks (dns_qps, http_reads, writes, acl_overhead) one after another and repeat their
# RESULT lines at the end.
#
#   bash benchmarks/run_all.sh            # everything, about 6-7 minutes
#   KEEP_LOGS=DIR bash benchmarks/run_all.sh   # also keep each benchmark's full output in DIR
#
# The benchmarks themselves install nothing; this script is the only place that calls apt-get.
# Every load goes to 127.0.0.1 only; each benchmark starts and stops its own meshd agent.
set -uo pipefail
cd "$(dirname "$0")/.."

export PATH="$PATH:/usr/sbin:/sbin"  # dnsmasq lives in sbin

need=()
command -v dnsperf >/dev/null 2>&1 || need+=(dnsperf)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
dnsmasq_missing=0
command -v dnsmasq >/dev/null 2>&1 || dnsmasq_missing=1

if [ "${#need[@]}" -gt 0 ] || [ "$dnsmasq_missing" -eq 1 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
      echo "ERROR: need root or sudo to install: ${need[*]} dnsmasq-base" >&2
      exit 1
    }
    SUDO="sudo"
  fi
  echo "==> apt-get update"
  $SUDO apt-get update -qq || { echo "ERROR: apt-get update failed" >&2; exit 1; }
  if [ "${#need[@]}" -gt 0 ]; then
    echo "==> installing: ${need[*]}"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null \
      || { echo "ERROR: apt-get install ${need[*]} failed" >&2; exit 1; }
  fi
  if [ "$dnsmasq_missing" -eq 1 ]; then
    # dnsmasq-base is the binary alone; the dnsmasq package would also start a system service.
    echo "==> installing: dnsmasq-base"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dnsmasq-base >/dev/null \
      || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dnsmasq >/dev/null \
      || { echo "ERROR: could not install dnsmasq-base or dnsmasq" >&2; exit 1; }
  fi
fi

# The repo's Python: its .venv when scripts/test created one, else $PYTHON, else python3.
if [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY="${PYTHON:-python3}"
fi
"$PY" -c 'import aiohttp, dnslib, meshd' 2>/dev/null || {
  echo "ERROR: $PY cannot import aiohttp/dnslib/meshd; run: $PY -m pip install -e ." >&2
  exit 1
}

logdir="${KEEP_LOGS:-$(mktemp -d -t meshd-bench-logs-XXXXXX)}"
mkdir -p "$logdir"
failed=()
for bench in dns_qps http_reads writes acl_overhead; do
  echo
  echo "################ $bench ################"
  "$PY" "benchmarks/$bench.py" 2>&1 | tee "$logdir/$bench.log"
  rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || failed+=("$bench (exit $rc)")
  [ "$rc" -eq 130 ] && break  # Ctrl-C: stop here
done

echo
echo "################ summary ################"
grep -h '^RESULT ' "$logdir"/*.log 2>/dev/null || echo "(no RESULT lines)"
if [ -z "${KEEP_LOGS:-}" ]; then
  rm -rf "$logdir"
else
  echo "full output kept in $logdir"
fi
if [ "${#failed[@]}" -gt 0 ]; then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi
