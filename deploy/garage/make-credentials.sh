#!/usr/bin/env bash
# Makes, once, the two env files deploy/docker-compose.s3.yml reads (both
# mode 0600, git-ignored, next to this script):
#   garage.env         GARAGE_RPC_SECRET, and the key Garage creates at its
#                      first start: GARAGE_DEFAULT_ACCESS_KEY (GK + 24 hex
#                      digits, Garage's own form), GARAGE_DEFAULT_SECRET_KEY
#                      (64 hex digits)
#   publisher-s3.env   the same key as AWS_ACCESS_KEY_ID and
#                      AWS_SECRET_ACCESS_KEY, for the publisher (and setup)
# A second run keeps them: Garage refuses to start with a different secret
# for a key it already has. To start over, remove both files and the
# garage-meta and garage-data volumes.
#
#   bash deploy/garage/make-credentials.sh
set -euo pipefail

dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
garage_env="$dir/garage.env"
node_env="$dir/publisher-s3.env"

if [[ -e "$garage_env" || -e "$node_env" ]]; then
  echo "keeping $garage_env and $node_env"
  exit 0
fi

# N hex digits from the kernel's random source.
hex() { od -An -tx1 -N"$(($1 / 2))" /dev/urandom | tr -d ' \n'; }

key="GK$(hex 24)"
secret="$(hex 64)"
umask 077
printf 'GARAGE_RPC_SECRET=%s\nGARAGE_DEFAULT_ACCESS_KEY=%s\nGARAGE_DEFAULT_SECRET_KEY=%s\n' \
  "$(hex 64)" "$key" "$secret" >"$garage_env.tmp"
printf 'AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\n' "$key" "$secret" >"$node_env.tmp"
mv -f "$garage_env.tmp" "$garage_env"
mv -f "$node_env.tmp" "$node_env"
echo "made $garage_env and $node_env (key $key)"
