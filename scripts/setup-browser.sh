#!/usr/bin/env bash
# Debian's Chromium for the dashboard's browser tests (tests/browser: Playwright for Python drives
# /usr/bin/chromium through executable_path; Playwright's own browser download is never used). Run by
# scripts/setup.sh; as root or as a user with sudo (only apt-get runs as root). Idempotent.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
script_name=setup-browser
# shellcheck source=scripts/as-root.sh
source scripts/as-root.sh

if [ -x /usr/bin/chromium ]; then
    echo "setup: chromium present ($(/usr/bin/chromium --version 2>/dev/null | head -n 1))"
else
    echo "setup: installing chromium (Debian's, for the dashboard's browser tests)"
    apt_install --no-install-recommends chromium
fi
