#!/bin/sh
# Cairn host first boot, run once by cloud-init: (bootstrap mode) install the agent's
# package from the controller, checked against its SHA-256; enrol with the one-use
# join token; start the agent. Each step's time goes to /var/log/cairn-firstboot.log,
# which the controller's measurements and an operator's debugging both read.
set -eu
log() { echo "$(date +%s.%N) $*" >> /var/log/cairn-firstboot.log; }
log start
# shellcheck disable=SC1091
. /etc/cairn/firstboot.env
if [ -n "${CAIRN_PACKAGE_URL:-}" ]; then
    # A real cloud image has no Docker Engine; a host whose engine is provided
    # otherwise (a socket already there) keeps it.
    if ! command -v docker >/dev/null 2>&1 && [ ! -S /var/run/docker.sock ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io
        log docker-installed
    fi
    deb=/var/tmp/cairn-agent.deb
    curl -fsS --retry 10 --retry-connrefused --retry-delay 2 --cacert /etc/cairn/ca.pem \
        -o "$deb" "$CAIRN_PACKAGE_URL"
    # The package runs as root on this host: only the exact file the controller
    # named is installed.
    echo "$CAIRN_PACKAGE_SHA256  $deb" | sha256sum -c --quiet -
    DEBIAN_FRONTEND=noninteractive dpkg -i "$deb"
    rm -f "$deb"
    log package-installed
fi
set --
for label in $CAIRN_LABELS; do set -- "$@" --label "$label"; done
CAIRN_JOIN_TOKEN="$CAIRN_JOIN_TOKEN" cairn-agent join --controller "$CAIRN_CONTROLLER" \
    --ca-sha256 "$CAIRN_CA_SHA256" --hostname "$CAIRN_HOSTNAME" "$@"
log joined
# The token is spent; it has no business staying on disk.
sed -i '/^CAIRN_JOIN_TOKEN=/d' /etc/cairn/firstboot.env
# Type=notify: this returns once the agent's link to the controller is up.
systemctl enable --now cairn-agent
log agent-active
