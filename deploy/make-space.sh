#!/usr/bin/env bash
# Makes a three-node data space with the dsnode CLI: the CA and the data
# dirs of a publisher, a consumer and an auditor, each with its key,
# node.toml, certificate (roles, region and host names attested by the CA)
# and the CA's CRL. The one-shot `setup` job of deploy/docker-compose.yml;
# also the source of the files for the Kubernetes Secrets (deploy/README.md).
#
#   bash deploy/make-space.sh [SPACE_DIR]
#
# Layout (SPACE_DIR, default ./space, or $DSNODE_SPACE_DIR):
#   ca/          ca.key (0600), ca.crt, crl.pem   keep ca.key offline
#   publisher/   city-transport        role publisher  region CN-HE
#   consumer/    acme-logistics        role consumer   region CN-HE
#   auditor/     city-data-regulator   role auditor
#
# Every name, address and port comes from the environment (defaults in
# brackets), so compose (service names as hosts, 0.0.0.0) and a loopback
# test (127.0.0.1, free ports) both use this script:
#   DSNODE_BIN             the dsnode binary                       [dsnode]
#   DSNODE_SPACE_DIR       where to make the space                 [./space]
#   DSNODE_CA_NAME         the CA's name              [Demo City Data Space CA]
#   DSNODE_LISTEN_HOST     IP every node listens on for gRPC       [0.0.0.0]
#   DSNODE_METRICS_HOST    IP of /metrics, /healthz, /readyz       [DSNODE_LISTEN_HOST]
#   DSNODE_CERT_DAYS       certificate validity, days              [365]
#   PUBLISHER_HOST, CONSUMER_HOST, AUDITOR_HOST
#       the host names peers dial, comma-separated if several (first one
#       is the address shown)                 [publisher, consumer, auditor]
#   PUBLISHER_PORT, CONSUMER_PORT, AUDITOR_PORT                  [7443]
#   PUBLISHER_METRICS_PORT, CONSUMER_METRICS_PORT, AUDITOR_METRICS_PORT [9464]
#   PUBLISHER_STORAGE_TOML, CONSUMER_STORAGE_TOML, AUDITOR_STORAGE_TOML
#       a file holding a [storage] section (object storage, see
#       deploy/README.md) to add to that node's node.toml when the node is
#       made; the node's `--check-config` then needs its S3 credentials in
#       the environment and the bucket up   [unset: local storage]
# Certificates always name localhost and 127.0.0.1 too, so `dsnode status`
# works inside a node's own container.
#
# Idempotent: a space already made (SPACE_DIR/ca/space.made, kept in the CA
# dir because that is the operator's volume) is left as it is, and an
# interrupted run resumes (existing keys and certificates are kept).
set -euo pipefail

DSNODE_BIN="${DSNODE_BIN:-dsnode}"
SPACE="${1:-${DSNODE_SPACE_DIR:-./space}}"
CA_NAME="${DSNODE_CA_NAME:-Demo City Data Space CA}"
LISTEN_HOST="${DSNODE_LISTEN_HOST:-0.0.0.0}"
METRICS_HOST="${DSNODE_METRICS_HOST:-$LISTEN_HOST}"
DAYS="${DSNODE_CERT_DAYS:-365}"

die() {
  echo "make-space: $*" >&2
  exit 1
}

# True if node.toml in $1 has a [storage] table.
has_storage() { grep -q '^[[:space:]]*\[storage\]' "$1/node.toml" 2>/dev/null; }

if [[ -e "$SPACE/ca/space.made" ]]; then
  # A [storage] section is added only when a node is made: a node that
  # already stores on its disk is not switched over behind its back.
  for n in publisher consumer auditor; do
    var="${n^^}_STORAGE_TOML"
    if [[ -n "${!var:-}" ]] && ! has_storage "$SPACE/$n"; then
      die "$var is set, but $SPACE/$n was made with local storage and is left so: make a new space (compose: \`down -v\` deletes this one), or add the section to its node.toml by hand (deploy/README.md, \"Object storage (S3)\")"
    fi
  done
  echo "data space already made in $SPACE; nothing to do"
  exit 0
fi

mkdir -p "$SPACE"
if [[ -e "$SPACE/ca/ca.key" ]]; then
  echo "CA: keeping $SPACE/ca"
else
  "$DSNODE_BIN" ca init --ca-dir "$SPACE/ca" --name "$CA_NAME"
fi

# IPv6 addresses in HOST:PORT need brackets.
addr() { if [[ "$1" == *:* ]]; then echo "[$1]:$2"; else echo "$1:$2"; fi; }

# make_node DIR PARTICIPANT ROLES REGION HOSTS PORT METRICS_PORT [STORAGE_TOML]
make_node() {
  local name="$1" participant="$2" roles="$3" region="$4" hosts="$5" port="$6" mport="$7"
  local storage="${8:-}"
  local dir="$SPACE/$name"
  local listen metrics
  listen="$(addr "$LISTEN_HOST" "$port")"
  metrics="$(addr "$METRICS_HOST" "$mport")"

  # The host names peers dial, then localhost and 127.0.0.1, each once.
  local -a host_args=()
  local -A seen=()
  local h
  local -a list=()
  IFS=',' read -r -a list <<<"$hosts"
  for h in "${list[@]}" localhost 127.0.0.1; do
    h="${h// /}"
    [[ -n "$h" && -z "${seen[$h]:-}" ]] || continue
    seen[$h]=1
    host_args+=(--host "$h")
  done

  if [[ -e "$dir/node.key" ]]; then
    echo "$name: keeping the key in $dir"
  else
    "$DSNODE_BIN" init --data-dir "$dir" --participant "$participant" \
      --ca-cert "$SPACE/ca/ca.crt" --listen "$listen" --metrics-listen "$metrics" \
      "${host_args[@]}"
  fi
  if [[ -n "$storage" ]]; then
    if has_storage "$dir"; then
      echo "$name: keeping the [storage] section of $dir/node.toml"
    else
      grep -q '^[[:space:]]*\[storage\]' "$storage" 2>/dev/null ||
        die "$storage (${name^^}_STORAGE_TOML) is not a file with a [storage] section"
      { cat "$dir/node.toml" && echo && cat "$storage"; } >"$dir/node.toml.tmp"
      chmod --reference="$dir/node.toml" "$dir/node.toml.tmp"
      mv -f "$dir/node.toml.tmp" "$dir/node.toml"
      echo "$name: [storage] from $storage added to $dir/node.toml"
    fi
  fi
  if [[ -e "$dir/node.crt" ]]; then
    echo "$name: keeping $dir/node.crt"
  else
    local -a region_args=()
    [[ -z "$region" ]] || region_args=(--region "$region")
    "$DSNODE_BIN" ca issue --ca-dir "$SPACE/ca" --csr "$dir/node.csr" --roles "$roles" \
      "${region_args[@]}" --days "$DAYS" --out "$dir/node.crt"
  fi
  cp "$SPACE/ca/crl.pem" "$dir/crl.pem.tmp"
  mv -f "$dir/crl.pem.tmp" "$dir/crl.pem"
  "$DSNODE_BIN" serve --data-dir "$dir" --check-config
  echo "$name: $participant ($roles) listens on $listen, peers dial ${list[0]}:$port; metrics on $metrics"
}

make_node publisher city-transport publisher CN-HE \
  "${PUBLISHER_HOST:-publisher}" "${PUBLISHER_PORT:-7443}" "${PUBLISHER_METRICS_PORT:-9464}" \
  "${PUBLISHER_STORAGE_TOML:-}"
make_node consumer acme-logistics consumer CN-HE \
  "${CONSUMER_HOST:-consumer}" "${CONSUMER_PORT:-7443}" "${CONSUMER_METRICS_PORT:-9464}" \
  "${CONSUMER_STORAGE_TOML:-}"
make_node auditor city-data-regulator auditor "" \
  "${AUDITOR_HOST:-auditor}" "${AUDITOR_PORT:-7443}" "${AUDITOR_METRICS_PORT:-9464}" \
  "${AUDITOR_STORAGE_TOML:-}"

date -u +%Y-%m-%dT%H:%M:%SZ >"$SPACE/ca/space.made"
echo "data space made in $SPACE (ca.key in $SPACE/ca: keep it offline)"
