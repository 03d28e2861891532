#!/bin/sh
# dhvisor package: before removal (deb prerm, rpm %preun). On an upgrade it
# does nothing. On removal it leaves no dhvisor process behind: the
# services are stopped in reverse dependency order while the agent still
# runs, then the daemons, then whatever is left (units of dhvisor.slice,
# exec-runtime services in the agent's control group). Configuration and
# state stay (deb: until purge).
set -e
case "$1" in
  remove|deconfigure|0) ;;
  *) exit 0 ;;   # deb upgrade/failed-upgrade, rpm upgrade (1)
esac
[ -d /run/systemd/system ] || exit 0
if systemctl is-active --quiet dhagent.service; then
  timeout 600 /usr/bin/dhctl down --local --block >/dev/null 2>&1 || true
fi
systemctl --no-reload disable --now dhagent.service dhcoord.service >/dev/null 2>&1 || true
systemctl stop dhvisor.slice >/dev/null 2>&1 || true
# KillMode=process keeps exec-runtime services across agent restarts; they
# are still in the agent's control group.
if [ -n "$(systemctl show -p ControlGroup --value dhagent.service 2>/dev/null)" ]; then
  systemctl kill --kill-who=all --signal=SIGTERM dhagent.service >/dev/null 2>&1 || true
  sleep 5
  systemctl kill --kill-who=all --signal=SIGKILL dhagent.service >/dev/null 2>&1 || true
fi
exit 0
