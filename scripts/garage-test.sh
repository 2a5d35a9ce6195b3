#!/usr/bin/env bash
# Runs dsnode's S3 integration tests (`cargo test --test it s3::`) against a
# real single-node Garage 2.x server instead of the in-process s3s-fs the
# tests start by default. Garage listens on 127.0.0.1 only, on free ports,
# with its metadata and data in a temp dir that is removed on exit.
#
#   scripts/garage-test.sh [TEST BINARY ARGS...]   e.g. --nocapture
#   DSNODE_GARAGE_ONLY_START=1 scripts/garage-test.sh
#       start Garage, print the DSNODE_TEST_S3_* exports, wait for Ctrl-C
#
# Environment (defaults in brackets):
#   GARAGE_BIN     the garage binary (2.3 or later, for --single-node)
#                  [garage on PATH, else $GARAGE_ROOT/bin/garage]
#   GARAGE_ROOT    where `cargo install` puts garage if it is missing [~/.cargo]
#   GARAGE_RUST_LOG  Garage's log filter                       [garage=info]
#
# The tests read DSNODE_TEST_S3_ENDPOINT, _BUCKET, _REGION, _ACCESS_KEY and
# _SECRET_KEY: with the endpoint set they use that server, not s3s-fs.
#
# Garage does the set-up itself (garage >= 2.3, `garage server --help`):
# --single-node assigns this node a layout (replication_factor = 1), and
# --default-bucket imports the key GARAGE_DEFAULT_ACCESS_KEY /
# GARAGE_DEFAULT_SECRET_KEY and creates GARAGE_DEFAULT_BUCKET with read,
# write and owner rights for it, all before the S3 port opens. Requests
# must be signed for s3_region ("garage"): Garage refuses any other.
# Garage's log stays in target/garage-test.log.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

GARAGE_ROOT="${GARAGE_ROOT:-$HOME/.cargo}"
BUCKET=dsnode-test
REGION=garage

die() {
  echo "garage-test: $*" >&2
  exit 1
}

# GARAGE_BIN, then PATH, then GARAGE_ROOT; installed there if none.
find_garage() {
  if [[ -n "${GARAGE_BIN:-}" ]]; then
    [[ -x "$GARAGE_BIN" ]] || die "GARAGE_BIN=$GARAGE_BIN is not an executable"
    return
  fi
  if GARAGE_BIN="$(command -v garage)"; then
    return
  fi
  GARAGE_BIN="$GARAGE_ROOT/bin/garage"
  [[ -x "$GARAGE_BIN" ]] && return
  echo "garage-test: no garage binary; installing Garage 2.x into $GARAGE_ROOT" \
    "(cargo install, about 30 minutes on two cores)" >&2
  cargo install garage --version '^2' --locked --root "$GARAGE_ROOT"
  [[ -x "$GARAGE_BIN" ]] || die "cargo install did not make $GARAGE_BIN"
}

# N hex digits from the kernel's random source.
hex() { od -An -tx1 -N"$(($1 / 2))" /dev/urandom | tr -d ' \n'; }

# True if something accepts connections on 127.0.0.1:$1.
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Sets the variable named $1 to a port on 127.0.0.1 that nothing listens
# on and that no earlier call gave.
PORTS=()
free_port() {
  local p i
  for ((i = 0; i < 100; i++)); do
    p=$((20000 + RANDOM % 40000))
    [[ " ${PORTS[*]} " == *" $p "* ]] && continue
    answers "$p" && continue
    PORTS+=("$p")
    printf -v "$1" '%s' "$p"
    return
  done
  die "no free port on 127.0.0.1"
}

find_garage
VERSION_LINE="$("$GARAGE_BIN" --version 2>&1 | head -n 1)"
# `garage v2.3.0 [...]` from a release, `garage cargo:2.5.0 [...]` from crates.io.
if [[ "$VERSION_LINE" =~ ([0-9]+)\.([0-9]+)\.[0-9]+ ]]; then
  major="${BASH_REMATCH[1]}" minor="${BASH_REMATCH[2]}"
  ((major > 2 || (major == 2 && minor >= 3))) ||
    die "$GARAGE_BIN is ${BASH_REMATCH[0]}; --single-node needs Garage 2.3 or later (unset GARAGE_BIN, or cargo install garage --version '^2')"
else
  echo "garage-test: cannot read a version from '$VERSION_LINE'; trying anyway" >&2
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/dsnode-garage.XXXXXX")"
# Kept after the run (the temp dir is not), overwritten by the next.
mkdir -p target
LOG="$PWD/target/garage-test.log"
: >"$LOG"
GARAGE_PID=""
cleanup() {
  local status=$?
  if [[ -n "$GARAGE_PID" ]] && kill -0 "$GARAGE_PID" 2>/dev/null; then
    kill -TERM "$GARAGE_PID" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$GARAGE_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$GARAGE_PID" 2>/dev/null || true
    wait "$GARAGE_PID" 2>/dev/null || true
  fi
  # A failure, not Ctrl-C or SIGTERM: Garage's complaints, if any.
  if ((status != 0 && status != 130 && status != 143)) && [[ -s "$LOG" ]]; then
    echo "garage-test: exit $status; Garage's warnings and errors (all of its log: $LOG):" >&2
    grep -E '^[^ ]+ +(WARN|ERROR) ' "$LOG" | tail -n 20 >&2 || echo "  none" >&2
  fi
  rm -rf "$TMP"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port RPC_PORT
free_port S3_PORT
ACCESS_KEY="GK$(hex 24)" # Garage's own form: GK + 12 random bytes in hex
SECRET_KEY="$(hex 64)"   # 32 random bytes in hex
CONFIG="$TMP/garage.toml"
(
  umask 077
  cat >"$CONFIG" <<EOF
# Written by scripts/garage-test.sh; removed when it exits.
metadata_dir = "$TMP/meta"
data_dir = "$TMP/data"
db_engine = "sqlite"
replication_factor = 1

rpc_bind_addr = "127.0.0.1:$RPC_PORT"
rpc_public_addr = "127.0.0.1:$RPC_PORT"
rpc_secret = "$(hex 64)"

[s3_api]
s3_region = "$REGION"
api_bind_addr = "127.0.0.1:$S3_PORT"
root_domain = ".s3.garage.localhost"
EOF
)

# Only the variables Garage reads: none of the caller's AWS_* or RUST_LOG.
env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_SESSION_TOKEN \
  RUST_LOG="${GARAGE_RUST_LOG:-garage=info}" NO_COLOR=1 \
  GARAGE_DEFAULT_ACCESS_KEY="$ACCESS_KEY" \
  GARAGE_DEFAULT_SECRET_KEY="$SECRET_KEY" \
  GARAGE_DEFAULT_BUCKET="$BUCKET" \
  "$GARAGE_BIN" -c "$CONFIG" server --single-node --default-bucket \
  >"$LOG" 2>&1 &
GARAGE_PID=$!

# The S3 port opens after the layout, key and bucket are made.
deadline=$((SECONDS + 60))
until answers "$S3_PORT"; do
  kill -0 "$GARAGE_PID" 2>/dev/null || die "garage exited before its S3 port opened"
  ((SECONDS < deadline)) || die "garage's S3 port 127.0.0.1:$S3_PORT did not open within 60 s"
  sleep 0.2
done
echo "garage-test: $VERSION_LINE ($GARAGE_BIN), S3 on 127.0.0.1:$S3_PORT, bucket $BUCKET" >&2

export DSNODE_TEST_S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
export DSNODE_TEST_S3_BUCKET="$BUCKET"
export DSNODE_TEST_S3_REGION="$REGION"
export DSNODE_TEST_S3_ACCESS_KEY="$ACCESS_KEY"
export DSNODE_TEST_S3_SECRET_KEY="$SECRET_KEY"

if [[ "${DSNODE_GARAGE_ONLY_START:-}" == 1 ]]; then
  cat <<EOF
# Garage runs until Ctrl-C. In another shell:
export DSNODE_TEST_S3_ENDPOINT=$DSNODE_TEST_S3_ENDPOINT
export DSNODE_TEST_S3_BUCKET=$DSNODE_TEST_S3_BUCKET
export DSNODE_TEST_S3_REGION=$DSNODE_TEST_S3_REGION
export DSNODE_TEST_S3_ACCESS_KEY=$DSNODE_TEST_S3_ACCESS_KEY
export DSNODE_TEST_S3_SECRET_KEY=$DSNODE_TEST_S3_SECRET_KEY
# Garage's CLI: $GARAGE_BIN -c $CONFIG bucket info $BUCKET
EOF
  set +e
  wait "$GARAGE_PID"
  status=$?
  GARAGE_PID=""
  die "garage exited ($status)"
fi

set +e
cargo test --test it s3:: -- --test-threads=2 "$@"
status=$?
set -e
echo "garage-test: cargo test exited $status against $VERSION_LINE" >&2
exit "$status"
