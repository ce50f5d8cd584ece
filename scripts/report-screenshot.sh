#!/usr/bin/env bash
# Renders a run's report.html in headless Chromium, fails on any console message or failed
# load from the page, and writes a screenshot.
#
#   scripts/report-screenshot.sh RUN_DIR [OUT.png]      (Debian: apt-get install chromium)
set -euo pipefail
run_dir=${1:?usage: scripts/report-screenshot.sh RUN_DIR [OUT.png]}
out=${2:-$run_dir/report.png}
page=$(realpath "$run_dir/report.html")
[ -f "$page" ] || { echo "error: $run_dir/report.html: missing (autodidact report $run_dir)" >&2; exit 1; }
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "error: no Chromium on PATH (apt-get install chromium)" >&2; exit 1; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# --enable-logging=stderr --v=0 makes Chromium print every console message of the page as a
# "CONSOLE" line (and failed resource loads as errors mentioning the page's URL).
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --window-size=1280,2400 --enable-logging=stderr --v=0 \
  --screenshot="$out" "file://$page" 2>"$log" >/dev/null
if grep -E "CONSOLE|Uncaught|Failed to load resource|net::ERR" "$log"; then
  echo "error: the page logged the messages above" >&2
  exit 1
fi
[ -s "$out" ] || { echo "error: no screenshot written" >&2; exit 1; }
echo "$out: rendered without console messages"
