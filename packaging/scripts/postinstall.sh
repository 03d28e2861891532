#!/bin/sh
# dhvisor package: after install or upgrade (deb postinst, rpm %post).
# Creates the dhvisor system user dhcoord runs as, gives it the
# coordinator's data directory, and reloads systemd so it sees the units. Nothing is enabled or started:
# that is the operator's decision (systemctl enable --now dhagent). On an
# upgrade, daemons that were running are restarted on the new binaries; the
# Deephaven services under them keep running (the new agent adopts them).
set -e
upgrade=false
case "$1" in
  configure) [ -n "$2" ] && upgrade=true ;;   # deb: configure [OLD-VERSION]
  [0-9]*) [ "$1" -gt 1 ] && upgrade=true ;;   # rpm: copies installed after this one
  *) exit 0 ;;                                # deb abort-* and the like
esac
# dhcoord needs no privilege: it runs as this user, with no login and no
# home of its own beyond its data directory.
if ! getent group dhvisor >/dev/null; then
  groupadd --system dhvisor
fi
if ! getent passwd dhvisor >/dev/null; then
  useradd --system --gid dhvisor --no-create-home --home-dir /var/lib/dhvisor/coordinator \
    --shell /usr/sbin/nologin --comment "dhvisor coordinator" dhvisor
fi
# A coordinator that ran as root before this version left root's files in
# its data directory; the agent's state directory above it only needs to
# let dhvisor through (0711, as dhagent.service keeps it).
if [ -d /var/lib/dhvisor ]; then
  chmod 0711 /var/lib/dhvisor
fi
if [ -d /var/lib/dhvisor/coordinator ]; then
  chown -R dhvisor:dhvisor /var/lib/dhvisor/coordinator
  chmod 0750 /var/lib/dhvisor/coordinator
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
  if [ "$upgrade" = true ]; then
    systemctl try-restart dhagent.service dhcoord.service || true
  fi
fi
exit 0
