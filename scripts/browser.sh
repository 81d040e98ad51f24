#!/usr/bin/env bash
# Installs Debian's chromium for the dashboard's browser test, when missing.
# Playwright drives it (executable_path=/usr/bin/chromium); no browser is
# downloaded by Playwright itself.
set -euo pipefail

command -v chromium >/dev/null && exit 0
printf 'browser: installing Debian'"'"'s chromium\n' >&2
sudo=""
[[ $(id -u) -eq 0 ]] || sudo=sudo
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
