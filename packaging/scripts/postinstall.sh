#!/bin/sh
# dhvisor package: after install or upgrade (deb postinst, rpm %post).
# Reloads systemd so it sees the units. Nothing is enabled or started:
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
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
  if [ "$upgrade" = true ]; then
    systemctl try-restart dhagent.service dhcoord.service || true
  fi
fi
exit 0
