#!/usr/bin/env bash
# Install, upgrade or remove the ILA-SOC agent as a systemd service on Linux.
#
#   sudo ops/install.sh                 install, or upgrade in place (config and buffer kept)
#   sudo ops/install.sh --uninstall     remove what was installed; keep config, buffer, logs
#   sudo ops/install.sh --uninstall --purge   also remove config, buffer, logs and the user
#   ops/install.sh --prefix /tmp/root   everything under a test root: no user, no systemctl
#
# Layout: /opt/ila-agent/venv (the program), /etc/ila-agent/config.json (mode 0640),
# /var/lib/ila-agent (buffer), /var/log/ila-agent (agent log),
# /etc/systemd/system/ila-agent.service.
set -euo pipefail

PREFIX=""
ACTION=install
PURGE=0
PYTHON="${PYTHON:-python3}"
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERVICE_USER=ila-agent

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX="${2%/}"; shift 2 ;;
    --prefix=*) PREFIX="${1#--prefix=}"; PREFIX="${PREFIX%/}"; shift ;;
    --uninstall) ACTION=uninstall; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage 2 ;;
  esac
done
[ "$PURGE" = 1 ] && [ "$ACTION" != uninstall ] && die "--purge goes with --uninstall"
if [ -n "$PREFIX" ]; then
  mkdir -p "$PREFIX"
  PREFIX="$(cd "$PREFIX" && pwd)"
fi

OPT="$PREFIX/opt/ila-agent"
ETC="$PREFIX/etc/ila-agent"
STATE="$PREFIX/var/lib/ila-agent"
LOGS="$PREFIX/var/log/ila-agent"
UNIT_DIR="$PREFIX/etc/systemd/system"
UNIT="$UNIT_DIR/ila-agent.service"
REAL_SYSTEM=0
if [ -z "$PREFIX" ]; then
  REAL_SYSTEM=1
  [ "$(id -u)" = 0 ] || die "run as root (or use --prefix DIR for a test root)"
fi
have_systemd() { [ "$REAL_SYSTEM" = 1 ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; }

render_unit() {
  # The unit names /opt, /etc, /var/lib and /var/log paths: put them under the prefix. A
  # supplementary group that does not exist here would stop the unit from starting (216/GROUP):
  # keep only those this host has.
  local groups="" g
  for g in adm systemd-journal; do
    getent group "$g" >/dev/null 2>&1 && groups="$groups $g"
  done
  groups="${groups# }"
  sed -e "s#/opt/ila-agent#$OPT#g" -e "s#/etc/ila-agent#$ETC#g" \
      -e "s#/var/lib/ila-agent#$STATE#g" -e "s#/var/log/ila-agent#$LOGS#g" \
      -e "s#^SupplementaryGroups=.*#${groups:+SupplementaryGroups=$groups}#" \
      "$SRC/ops/systemd/ila-agent.service"
}

install_agent() {
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "$PYTHON is older than 3.10"
  if [ "$REAL_SYSTEM" = 1 ] && ! getent passwd "$SERVICE_USER" >/dev/null; then
    say "creating system user $SERVICE_USER"
    useradd --system --home-dir /var/lib/ila-agent --no-create-home \
            --shell /usr/sbin/nologin --user-group "$SERVICE_USER"
  fi
  if [ "$REAL_SYSTEM" = 1 ]; then
    for g in adm systemd-journal; do
      getent group "$g" >/dev/null && usermod -a -G "$g" "$SERVICE_USER"
    done
  fi
  mkdir -p "$OPT" "$ETC" "$STATE" "$LOGS" "$UNIT_DIR" "$OPT/share"
  chmod 0755 "$OPT"
  chmod 0700 "$STATE" "$LOGS"
  chmod 0750 "$ETC"
  if [ ! -x "$OPT/venv/bin/python" ]; then
    say "creating $OPT/venv"
    "$PYTHON" -m venv "$OPT/venv"
  fi
  say "installing the agent from $SRC"
  "$OPT/venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$SRC"
  cp "$SRC/SERVICE_INSTALL.md" "$OPT/share/SERVICE_INSTALL.md"
  if [ ! -e "$ETC/config.json" ]; then
    say "writing $ETC/config.json (collect-only until you set server_url and the key)"
    umask 027
    cat > "$ETC/config.json" <<JSON
{
  "server_url": null,
  "log_sources": ["/var/log/auth.log", "/var/log/syslog", "/var/log/secure"],
  "buffer_db": "$STATE/log_buffer.db",
  "agent_log_file": "$LOGS/agent.log"
}
JSON
    chmod 0640 "$ETC/config.json"
  else
    say "keeping $ETC/config.json"
  fi
  render_unit > "$UNIT.tmp"
  chmod 0644 "$UNIT.tmp"
  mv "$UNIT.tmp" "$UNIT"
  if [ "$REAL_SYSTEM" = 1 ]; then
    chown root:"$SERVICE_USER" "$ETC" "$ETC/config.json"
    chown "$SERVICE_USER":"$SERVICE_USER" "$STATE" "$LOGS"
  fi
  if have_systemd; then
    systemctl daemon-reload
    systemctl enable ila-agent.service >/dev/null
    if systemctl is-active --quiet ila-agent.service; then
      say "restarting the running service on the new version"
      systemctl restart ila-agent.service
    else
      say "enabled; start it with: systemctl start ila-agent"
    fi
  fi
  say "installed $("$OPT/venv/bin/ila-agent" --version)"
}

uninstall_agent() {
  if have_systemd; then
    systemctl disable --now ila-agent.service 2>/dev/null || true
  fi
  rm -f "$UNIT"
  have_systemd && systemctl daemon-reload
  rm -rf "$OPT"
  if [ "$PURGE" = 1 ]; then
    say "purging config, buffer and logs"
    rm -rf "$ETC" "$STATE" "$LOGS"
    if [ "$REAL_SYSTEM" = 1 ] && getent passwd "$SERVICE_USER" >/dev/null; then
      userdel "$SERVICE_USER" || true
    fi
  else
    say "kept $ETC, $STATE and $LOGS (use --purge to remove them)"
  fi
  say "uninstalled"
}

case "$ACTION" in
  install) install_agent ;;
  uninstall) uninstall_agent ;;
esac
