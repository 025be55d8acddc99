#!/usr/bin/env bash
# A page of the HTML view (docs/view.md) in headless Chromium (Debian's chromium), as a PNG:
#   scripts/view_screenshot.sh PAGE.html OUT.png [WIDTH [HEIGHT]]   (default 1200 x 1500)
# The page is opened from the file system (file://), as a user opens it. Fails with one line
# where Chromium is missing or the page wrote to its console (a script error, a resource that
# did not load). tests/e2e/html_test.sh uses it; so was docs/img/run-view.png made.
set -uo pipefail
page=$1 out=$2 width=${3:-1200} height=${4:-1500}
chromium=${MOELAB_CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
  echo "view_screenshot: $chromium is missing (Debian package chromium: scripts/apt_install.sh chromium)" >&2
  exit 1
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
log="$profile/chromium.log"
# --no-sandbox: Chromium refuses its sandbox as root (CI); the page is local and trusted.
timeout 60 "$chromium" --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --user-data-dir="$profile" --enable-logging=stderr --v=0 --force-device-scale-factor=1 \
  --window-size="$width,$height" --screenshot="$(realpath -m "$out")" \
  "file://$(realpath "$page")" >"$log" 2>&1
rc=$?
if [ $rc -ne 0 ] || [ ! -s "$out" ]; then
  echo "view_screenshot: chromium failed on $page (exit $rc): $(grep -v '^$' "$log" | tail -1)" >&2
  exit 1
fi
if grep -q ':CONSOLE' "$log"; then
  echo "view_screenshot: $page wrote to the console: $(grep -m1 ':CONSOLE' "$log" | sed 's/^[^]]*\] //')" >&2
  exit 1
fi
