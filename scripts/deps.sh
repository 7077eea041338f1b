#!/usr/bin/env bash
# Installs the Debian packages Gangway needs, only those missing.
#   scripts/deps.sh build   what building the gateway needs
#   scripts/deps.sh test    plus the real peers the test suite drives
set -euo pipefail

build_pkgs=(build-essential cmake pkg-config)
test_pkgs=(chromium chromium-driver sip-tester baresip kamailio prometheus)

want=("${build_pkgs[@]}")
if [[ "${1:-build}" == "test" ]]; then
    want+=("${test_pkgs[@]}")
    # The SIP-over-WebSocket tests bundle JsSIP and SIP.js with npm. A node
    # from elsewhere (NodeSource, nvm) is kept: Debian's npm depends on
    # Debian's nodejs and would replace it.
    if ! command -v node >/dev/null; then
        want+=(nodejs npm)
    elif ! command -v npm >/dev/null; then
        if [[ $(dpkg-query -W -f='${Version}' nodejs 2>/dev/null) == *dfsg* ]]; then
            want+=(npm)
        else
            echo "gangway: $(command -v node) has no npm next to it; install npm for that node" >&2
            exit 1
        fi
    fi
fi

missing=()
for p in "${want[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "gangway: installing missing packages: ${missing[*]}" >&2
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null; then
        SUDO=sudo
    else
        echo "gangway: run as root, or install them yourself: apt-get install ${missing[*]}" >&2
        exit 1
    fi
else
    SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
