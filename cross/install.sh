#!/usr/bin/env bash
# Install (or upgrade, or roll back) the Moirai agent on a board, as root.
#
#   install.sh --binary moirai-agent --board firmware-configs/BOARD.toml \
#              --name NAME --broker mqtts://orchestrator:8883 \
#              [--ca ca.pem] [--username USER --password-file FILE] [--no-start]
#   install.sh --binary moirai-agent          # upgrade: config in /etc/moirai is kept
#   install.sh --rollback                     # current <-> previous, restart
#
# Every build goes to /opt/moirai/releases/<version>/ with its SHA-256 beside it; `current`
# and `previous` are symlinks, switched atomically, so the previous binary stays on disk for
# a rollback. Config files that exist are never overwritten (use --force-config).
#
# --root DIR installs under DIR instead of / and skips users and systemctl (for staging an
# image, and for the tests).
set -euo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
die() { echo "install.sh: error: $*" >&2; exit 1; }
log() { echo "==> $*"; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=
binary= board= name= broker= ca= username= password_file= extra=
start=1 force_config=0 rollback=0
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary=$2; shift ;;
        --board) board=$2; shift ;;
        --name) name=$2; shift ;;
        --broker) broker=$2; shift ;;
        --ca) ca=$2; shift ;;
        --username) username=$2; shift ;;
        --password-file) password_file=$2; shift ;;
        --args) extra=$2; shift ;;
        --root) root=$2; shift ;;
        --no-start) start=0 ;;
        --force-config) force_config=1 ;;
        --rollback) rollback=1 ;;
        -h | --help) usage ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    [ $# -gt 0 ] && shift
done

opt=$root/opt/moirai
etc=$root/etc/moirai
unit_dir=$root/etc/systemd/system
staging=0
[ -n "$root" ] && staging=1
if [ "$staging" = 0 ] && [ "$(id -u)" -ne 0 ]; then die "run as root (or use --root DIR to stage)"; fi

systemd_up() { [ "$staging" = 0 ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; }

# Points symlink $1 at $2 atomically (rename over the old link).
switch_link() {
    ln -sfn "$2" "$1.new"
    mv -Tf "$1.new" "$1"
}

restart() {
    if [ "$start" = 1 ] && systemd_up; then
        systemctl daemon-reload
        systemctl enable moirai-agent.service >/dev/null
        systemctl restart moirai-agent.service
        log "moirai-agent restarted ($(systemctl is-active moirai-agent.service))"
    elif [ "$start" = 1 ] && [ "$staging" = 0 ]; then
        log "systemd is not running here: start $opt/current/moirai-agent yourself"
    fi
}

if [ "$rollback" = 1 ]; then
    [ -L "$opt/previous" ] || die "no previous release in $opt to roll back to"
    cur=$(readlink "$opt/current")
    prev=$(readlink "$opt/previous")
    switch_link "$opt/current" "$prev"
    switch_link "$opt/previous" "$cur"
    log "rolled back: current -> $prev (previous -> $cur)"
    restart
    exit 0
fi

[ -n "$binary" ] || usage
[ -f "$binary" ] || die "binary $binary not found"

# Version: ask the binary when it runs here, else only the checksum names the release.
sum=$(sha256sum "$binary" | cut -d' ' -f1)
version=
if out=$("$binary" --version 2>/dev/null); then version=$(echo "$out" | awk '{print $NF}'); fi
release=${version:+$version-}${sum:0:12}
log "installing moirai-agent ${version:-(version unknown: other architecture)} as release $release"

mkdir -p "$opt/releases/$release" "$etc"
install -m 0755 "$binary" "$opt/releases/$release/moirai-agent.tmp"
mv -f "$opt/releases/$release/moirai-agent.tmp" "$opt/releases/$release/moirai-agent"
echo "$sum  moirai-agent" > "$opt/releases/$release/SHA256SUMS"
(cd "$opt/releases/$release" && sha256sum -c --quiet SHA256SUMS) || die "checksum mismatch after copy"

if [ -L "$opt/current" ]; then
    old=$(readlink "$opt/current")
    if [ "$old" != "releases/$release" ]; then
        switch_link "$opt/previous" "$old"
        log "previous release kept: $old"
    fi
fi
switch_link "$opt/current" "releases/$release"

# Keep current and previous only.
keep_cur=$(readlink "$opt/current")
keep_prev=$(readlink "$opt/previous" 2>/dev/null || true)
for d in "$opt"/releases/*/; do
    rel=releases/$(basename "$d")
    if [ "$rel" != "$keep_cur" ] && [ "$rel" != "$keep_prev" ]; then
        rm -rf "$d"
        log "removed old $rel"
    fi
done

# Config: written on first install, kept on upgrade.
write_config() { [ "$force_config" = 1 ] || [ ! -e "$1" ]; }
if [ -n "$board" ]; then
    [ -f "$board" ] || die "board file $board not found"
    if write_config "$etc/board.toml"; then install -m 0644 "$board" "$etc/board.toml"; log "board: $board"; fi
fi
if [ -n "$ca" ]; then
    mkdir -p "$etc/tls"
    if write_config "$etc/tls/ca.pem"; then install -m 0644 "$ca" "$etc/tls/ca.pem"; fi
fi
if [ -n "$password_file" ]; then
    if write_config "$etc/password"; then install -m 0600 "$password_file" "$etc/password"; fi
fi
if write_config "$etc/agent.env"; then
    [ -n "$name" ] && [ -n "$broker" ] || die "first install needs --name and --broker"
    args=$extra
    [ -n "$username" ] && args="$args --username $username"
    [ -n "$password_file" ] && args="$args --password-file /etc/moirai/password"
    [ -n "$ca" ] && args="$args --ca-file /etc/moirai/tls/ca.pem"
    umask 077
    cat > "$etc/agent.env" <<ENV
# Read by moirai-agent.service. Written by cross/install.sh; kept on upgrades.
MOIRAI_BROKER=$broker
MOIRAI_NAME=$name
MOIRAI_AGENT_ARGS=${args# }
ENV
    umask 022
    log "wrote $etc/agent.env"
fi
[ -f "$etc/board.toml" ] || die "no $etc/board.toml: pass --board firmware-configs/BOARD.toml"

mkdir -p "$unit_dir"
install -m 0644 "$here/moirai-agent.service" "$unit_dir/moirai-agent.service"

if [ "$staging" = 0 ]; then
    if ! id moirai >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/moirai --shell /usr/sbin/nologin moirai
        log "created system user moirai"
    fi
    for g in video render; do
        getent group "$g" >/dev/null || groupadd --system "$g"
    done
    chown -R moirai:moirai "$opt"
    chown root:moirai "$etc/agent.env"
    chmod 0640 "$etc/agent.env"
    [ -f "$etc/password" ] && chown moirai:moirai "$etc/password"
fi
restart
log "installed: $opt/current -> $(readlink "$opt/current")"
