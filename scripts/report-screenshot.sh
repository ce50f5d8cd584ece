#!/usr/bin/env bash
# Renders a report (a run's report.html, or a page written by `autodidact compare`) in
# headless Chromium, fails on any console message or failed load from the page, and writes a
# screenshot of its first HEIGHT pixels at 1280 wide (default 900: the first screen).
#
#   scripts/report-screenshot.sh RUN_DIR|PAGE.html [OUT.png] [HEIGHT]   (Debian: apt-get install chromium)
set -euo pipefail
usage="usage: scripts/report-screenshot.sh RUN_DIR|PAGE.html [OUT.png] [HEIGHT]"
target=${1:?$usage}
if [ -d "$target" ]; then
  page=$target/report.html
  out=${2:-$target/report.png}
  [ -f "$page" ] || { echo "error: $page: missing (autodidact report $target)" >&2; exit 1; }
else
  page=$target
  out=${2:-${target%.html}.png}
  [ -f "$page" ] || { echo "error: $page: no such page or run directory" >&2; exit 1; }
fi
height=${3:-900}
[[ "$height" =~ ^[1-9][0-9]*$ ]] || { echo "error: HEIGHT must be a positive number of pixels, not '$height'" >&2; exit 1; }
page=$(realpath "$page")
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$browser" ] || { echo "error: no Chromium on PATH (apt-get install chromium)" >&2; exit 1; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# --enable-logging=stderr --v=0 makes Chromium print every console message of the page as a
# "CONSOLE" line (and failed resource loads as errors mentioning the page's URL).
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --window-size=1280,"$height" --enable-logging=stderr --v=0 \
  --screenshot="$out" "file://$page" 2>"$log" >/dev/null
if grep -E "CONSOLE|Uncaught|Failed to load resource|net::ERR" "$log"; then
  echo "error: the page logged the messages above" >&2
  exit 1
fi
[ -s "$out" ] || { echo "error: no screenshot written" >&2; exit 1; }
echo "$out: rendered without console messages"
