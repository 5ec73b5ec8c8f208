#!/usr/bin/env bash
# A throw-away Debian bookworm machine with a real systemd as its PID 1 (systemd-nspawn), for the
# systemd test suite (scripts/test-systemd). Needs root on a Debian/Ubuntu host.
#
#   box.sh up   STATE   boot a container; STATE (a new, empty directory) keeps its pids and logs
#   box.sh exec STATE CMD...   run CMD inside the container (as root, in all its namespaces)
#   box.sh down STATE   power it off; kill it if it does not go; waits until it is gone
#
# The root file system is built once with debootstrap (about 2 minutes) into $TT_BOX_CACHE
# (default /var/cache/tinytownd-box) and never modified afterwards: every boot runs with
# --volatile=overlay, so whatever a test changes lives in a tmpfs and is gone after `down`.
# `rm -rf $TT_BOX_CACHE` forces a fresh build. Extra read-only mounts: TT_BOX_BIND="HOST:CONTAINER
# HOST:CONTAINER" (passed to --bind-ro=).
#
# Why it is done this way:
# - The container shares the host's network (no --private-network: no bridge to set up). Debian's
#   own redis-server.service is masked in the image so nothing listens on 6379 there.
# - Without systemd on the host (containers, some CI images) there is no bus to register a
#   machine or create a scope with: --register=no --keep-unit, and we enter the container with
#   nsenter instead of machinectl. With systemd on the host, the container gets its own transient
#   scope with Delegate=yes (systemd-run --scope), which the systemd inside needs for its cgroups.
set -euo pipefail

CACHE=${TT_BOX_CACHE:-/var/cache/tinytownd-box}
ROOTFS=$CACHE/rootfs
SUITE=bookworm
# what the tests need in there: systemd, python3 + venv (the README install), redis-server, and
# the agent CLIs the sandbox is tested with (sh, python3, node, git)
PACKAGES=systemd,systemd-sysv,dbus,procps,ca-certificates,python3,python3-venv,redis-server,git,nodejs
STAMP="$ROOTFS/.tinytownd-box-ready"

die() { echo "box.sh: $*" >&2; exit 1; }

need_tools() {
  [ "$(id -u)" -eq 0 ] || die "needs root (systemd-nspawn and debootstrap)"
  command -v systemd-nspawn >/dev/null && command -v debootstrap >/dev/null && return 0
  command -v apt-get >/dev/null || die "no systemd-nspawn/debootstrap, and no apt-get to install them"
  echo "box.sh: installing systemd-container debootstrap (apt)" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd-container debootstrap >&2
}

mirror() {   # the host's Debian mirror when it has one, else deb.debian.org
  local m=
  m=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$m" ] || m=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  case "$m" in *debian*) echo "$m" ;; *) echo http://deb.debian.org/debian ;; esac
}

build_rootfs() {
  [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$PACKAGES" ] && return 0
  rm -rf "$ROOTFS"
  local log=$CACHE/debootstrap.log
  echo "box.sh: debootstrap $SUITE into $ROOTFS (once; log: $log)" >&2
  if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$(mirror)" \
        >"$log" 2>&1; then
    tail -n 20 "$log" >&2; rm -rf "$ROOTFS"; die "debootstrap failed (see above)"
  fi
  echo tinytownd-box > "$ROOTFS/etc/hostname"
  : > "$ROOTFS/etc/machine-id"                       # a fresh id at every boot
  systemctl --root="$ROOTFS" mask redis-server.service >/dev/null 2>&1
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
  echo "$PACKAGES" > "$STAMP"
}

state_dir() { [ -n "${1:-}" ] || die "usage: box.sh up|exec|down STATE ..."; echo "$1"; }
alive() { [ -s "$1/nspawn.pid" ] && kill -0 "$(cat "$1/nspawn.pid")" 2>/dev/null; }

# Run CMD inside: the namespaces of the container's PID 1, a clean environment.
box_exec() {
  local st=$1; shift
  [ -s "$st/leader.pid" ] && alive "$st" || die "no container running for $st"
  exec nsenter -t "$(cat "$st/leader.pid")" -a \
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LANG=C.UTF-8 TERM=dumb SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}

up() {
  local st=$1
  need_tools
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"; flock 9; build_rootfs; exec 9>&-   # one build at a time
  mkdir -p "$st"
  alive "$st" && die "a container already runs for $st"
  local binds=() b
  for b in ${TT_BOX_BIND:-}; do binds+=("--bind-ro=$b"); done
  local launch=()
  if [ -d /run/systemd/system ] && command -v systemd-run >/dev/null; then
    launch=(systemd-run --scope --quiet -p Delegate=yes --unit="tinytownd-box-$$")
  fi
  # setsid: the container must not share our terminal's process group (Ctrl-C goes to us, and
  # our EXIT trap powers it off properly).
  setsid "${launch[@]}" systemd-nspawn --quiet -D "$ROOTFS" --volatile=overlay \
      -M "ttbox$$" --register=no --keep-unit --console=passive --boot "${binds[@]}" \
      >"$st/boot.log" 2>&1 </dev/null &
  echo $! > "$st/nspawn.pid"
  local leader= _
  for _ in $(seq 1 60); do
    alive "$st" || { tail -n 20 "$st/boot.log" >&2; die "systemd-nspawn exited during boot"; }
    leader=$(pgrep -P "$(cat "$st/nspawn.pid")" -x systemd || true)
    [ -n "$leader" ] && break
    sleep 0.5
  done
  [ -n "$leader" ] || { tail -n 20 "$st/boot.log" >&2; die "no systemd inside after 30 s"; }
  echo "$leader" > "$st/leader.pid"
  # Wait for the boot to finish; "degraded" (some unit of the image failed) is fine for us.
  local state=
  for _ in $(seq 1 120); do
    state=$( (box_exec "$st" systemctl is-system-running) 2>/dev/null || true)
    case "$state" in running|degraded) break ;; esac
    sleep 0.5
  done
  case "$state" in running|degraded) ;; *) tail -n 20 "$st/boot.log" >&2
    die "systemd in the container did not finish booting (state: ${state:-none})" ;; esac
  echo "box.sh: systemd $(box_exec "$st" systemctl --version | awk 'NR==1 {print $2}') is up" \
       "(system state: $state, leader pid $leader)" >&2
}

down() {
  local st=$1 leader= _
  alive "$st" || { rm -f "$st/nspawn.pid" "$st/leader.pid"; return 0; }
  # An orderly poweroff; without a way in, SIGTERM to systemd-nspawn asks the container for one.
  (box_exec "$st" systemctl poweroff --no-block) >/dev/null 2>&1 ||
    kill -TERM "$(cat "$st/nspawn.pid")" 2>/dev/null || true
  for _ in $(seq 1 60); do alive "$st" || break; sleep 0.5; done
  if alive "$st"; then
    echo "box.sh: the container did not power off within 30 s; killing it" >&2
    leader=$(cat "$st/leader.pid" 2>/dev/null || pgrep -P "$(cat "$st/nspawn.pid")" -x systemd) || true
    [ -n "$leader" ] && kill -KILL "$leader" 2>/dev/null    # ends the container's PID namespace
    for _ in $(seq 1 20); do alive "$st" || break; sleep 0.5; done
    alive "$st" && kill -KILL "$(cat "$st/nspawn.pid")" 2>/dev/null
  fi
  rm -f "$st/nspawn.pid" "$st/leader.pid"
}

cmd=${1:-}; shift || true
case "$cmd" in
  up)   up "$(state_dir "${1:-}")" ;;
  exec) st=$(state_dir "${1:-}"); shift; box_exec "$st" "$@" ;;
  down) down "$(state_dir "${1:-}")" ;;
  *)    sed -n '2,8p' "$0" >&2; exit 64 ;;
esac
