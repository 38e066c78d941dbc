#!/usr/bin/env bash
# Installs what the interop suite (nox -s interop, docs/interop.md) needs and is missing:
# the build dependencies of the Rust coordinator, the coordinator itself (crate `mito`
# 0.6.8, which is also the Rust worker) and the PostgreSQL role `mitosis`.
# Idempotent: every step checks first. The first `cargo install` takes 20-30 minutes on
# 2 cores; later runs find `~/.cargo/bin/mito` 0.6.8 and skip it.
set -euo pipefail

MITO_VERSION=0.6.8
CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
MITO_BIN=$CARGO_HOME/bin/mito
PG_HOST=${MITO_INTEROP_PG_HOST:-127.0.0.1}
PG_PORT=${MITO_INTEROP_PG_PORT:-5432}
PG_SUPERUSER=${MITO_INTEROP_PG_SUPERUSER:-postgres}

log() { printf 'install-interop: %s\n' "$*"; }

# 1. apt packages, only those missing.
missing=()
for pkg in build-essential pkg-config zlib1g-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
        || missing+=("$pkg")
done
command -v psql >/dev/null || missing+=(postgresql-client)
command -v openssl >/dev/null || missing+=(openssl)
if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
else
    log "apt packages present"
fi

# 2. The coordinator (and Rust worker): cargo skips it when this version is installed.
if [ -x "$MITO_BIN" ] && "$MITO_BIN" --version 2>/dev/null | head -n1 | grep -qx "mito $MITO_VERSION"; then
    log "$MITO_BIN $MITO_VERSION present"
else
    command -v cargo >/dev/null || { log "cargo not found: install a Rust toolchain first"; exit 1; }
    log "cargo install mito --version $MITO_VERSION --locked (20-30 min the first time)"
    cargo install mito --version "$MITO_VERSION" --locked
fi

# 3. The PostgreSQL role the coordinator connects as (databases are made per test run).
psql_admin() {
    psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_SUPERUSER" -d postgres -v ON_ERROR_STOP=1 -tAc "$1"
}
if [ "$(psql_admin "SELECT 1 FROM pg_roles WHERE rolname = 'mitosis'")" = "1" ]; then
    log "PostgreSQL role mitosis present"
else
    log "creating PostgreSQL role mitosis"
    psql_admin "CREATE ROLE mitosis LOGIN PASSWORD 'mitosis'"
fi
