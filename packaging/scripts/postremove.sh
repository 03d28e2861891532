#!/bin/sh
# dhvisor package: after removal (deb postrm, rpm %postun). Configuration
# and state are kept; `apt purge` (deb) removes them.
set -e
case "$1" in
  purge)
    rm -rf /etc/dhvisor /var/lib/dhvisor /run/dhvisor
    # Debian policy leaves a system user behind (its uid may still own
    # files, in backups say); nothing runs as it once the package is gone.
    ;;
esac
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
