#!/usr/bin/env bash
# Entrypoint of the dsnode image (deploy/Dockerfile).
#
#   docker-entrypoint.sh [serve] [SERVE OPTIONS]   run the node (the default)
#   docker-entrypoint.sh --help | --version       dsnode's
#   docker-entrypoint.sh healthcheck              exit 0 iff GET /readyz is 200
#   docker-entrypoint.sh SUBCOMMAND ARGS...       any other dsnode subcommand
#   docker-entrypoint.sh PROGRAM ARGS...          anything else, e.g. bash
#
# Serving:
#   1. With DSNODE_SECRETS_DIR set (a mounted Kubernetes Secret, possibly
#      projected together with a ConfigMap holding node.toml), copies
#      node.key and tls.key (mode 0600), node.crt, ca.crt, crl.pem and
#      node.toml from there into the data dir. Secret files are read-only
#      symlinks owned by root or the fsGroup; dsnode refuses a key that
#      others can read, so each key gets its own 0600 copy.
#   2. Checks that the data dir holds what `dsnode serve` needs, naming
#      what is missing and how to make it.
#   3. exec dsnode serve --data-dir "$DSNODE_DATA_DIR" (PID 1: SIGTERM
#      drains and exits 0, SIGHUP reloads crl.pem).
#
# Environment:
#   DSNODE_BIN          the dsnode binary               [dsnode]
#   DSNODE_DATA_DIR     the node's data dir             [/data]
#   DSNODE_SECRETS_DIR  where the Secret is mounted     [unset: no copy]
set -euo pipefail

DSNODE_BIN="${DSNODE_BIN:-dsnode}"
export DSNODE_DATA_DIR="${DSNODE_DATA_DIR:-/data}"
DATA="$DSNODE_DATA_DIR"

die() {
  echo "docker-entrypoint: $*" >&2
  exit 1
}

# Copies the credentials from DSNODE_SECRETS_DIR into the data dir.
install_secrets() {
  local from="$DSNODE_SECRETS_DIR" f mode
  [[ -d "$from" ]] || die "DSNODE_SECRETS_DIR=$from is not a directory"
  mkdir -p "$DATA"
  for f in node.key tls.key node.crt ca.crt; do
    [[ -e "$from/$f" ]] || die "$from/$f is missing: the Secret must hold node.key, tls.key, node.crt and ca.crt (and crl.pem); see deploy/README.md"
    grep -q -- '-----BEGIN' "$from/$f" ||
      die "$from/$f is not PEM (a placeholder Secret?); fill the Secret from make-space.sh's output: see deploy/README.md"
  done
  for f in node.key tls.key node.crt ca.crt crl.pem node.toml; do
    [[ -e "$from/$f" ]] || continue
    mode=0644
    [[ "$f" != *.key ]] || mode=0600
    # A temp file in the data dir renamed into place: never a half-written
    # file, and never a moment where the key is readable by others.
    install -m "$mode" "$from/$f" "$DATA/.$f.tmp"
    mv -f "$DATA/.$f.tmp" "$DATA/$f"
  done
  echo "docker-entrypoint: credentials installed from $from into $DATA" >&2
}

# Says what the data dir lacks for `dsnode serve`.
check_data_dir() {
  [[ -d "$DATA" ]] || die "data dir $DATA does not exist: mount the node's volume there, or run make-space.sh / dsnode init"
  local -a missing=()
  local f
  for f in node.toml node.key tls.key node.crt ca.crt crl.pem; do
    [[ -s "$DATA/$f" ]] || missing+=("$f")
  done
  if ((${#missing[@]})); then
    die "data dir $DATA lacks ${missing[*]}: node.toml, node.key and tls.key come from \`dsnode init\`, node.crt from \`dsnode ca issue\`, ca.crt and crl.pem from the CA (deploy/make-space.sh makes them all; on Kubernetes set DSNODE_SECRETS_DIR to the mounted Secret)"
  fi
  local mode key
  for key in node.key tls.key; do
    mode="$(stat -c %a "$DATA/$key")"
    (((8#$mode & 8#077) == 0)) ||
      die "$DATA/$key has mode $mode; dsnode needs it readable by its owner only (chmod 600 $DATA/$key)"
  done
}

# GET /readyz on the metrics listener named in node.toml; exit 0 iff 200.
# Bash's /dev/tcp: the runtime image needs no curl.
healthcheck() {
  local line addr host port status
  line="$(grep -E '^[[:space:]]*metrics_listen[[:space:]]*=' "$DATA/node.toml" 2>/dev/null | tail -n 1)" ||
    die "no metrics_listen in $DATA/node.toml: the health check needs the metrics listener"
  addr="${line#*=}"
  addr="${addr//[\" ]/}"
  port="${addr##*:}"
  host="${addr%:*}"
  host="${host#[}"
  host="${host%]}"
  case "$host" in
    0.0.0.0 | "") host=127.0.0.1 ;;
    ::) host=::1 ;;
  esac
  { exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null || die "cannot connect to $host:$port (not running?)"
  printf 'GET /readyz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$host" >&3
  read -r -t 5 _ status _ <&3 || die "no answer from $host:$port"
  exec 3<&-
  [[ "$status" == 200 ]] || die "GET /readyz on $host:$port: $status (not serving)"
  echo "ready"
}

serve() {
  [[ -z "${DSNODE_SECRETS_DIR:-}" ]] || install_secrets
  check_data_dir
  exec "$DSNODE_BIN" serve --data-dir "$DATA" "$@"
}

if (($# == 0)); then
  serve
fi
case "$1" in
  serve)
    shift
    serve "$@"
    ;;
  -h | --help | -V | --version)
    exec "$DSNODE_BIN" "$@"
    ;;
  -*)
    # Options only: options of `serve`.
    serve "$@"
    ;;
  healthcheck)
    healthcheck
    ;;
  *)
    if "$DSNODE_BIN" help "$1" >/dev/null 2>&1; then
      exec "$DSNODE_BIN" "$@"
    fi
    exec "$@"
    ;;
esac
