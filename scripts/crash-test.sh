#!/usr/bin/env bash
# The ledger's kill -9 crash loop at scale: a child process appends with 16
# concurrent appenders and reports every acknowledged index over a pipe; it
# is killed with SIGKILL at a random moment; the ledger is reopened, fully
# verified, and every acknowledged entry is checked at its index. CI runs
# 24 cycles as part of `cargo test`; this runs 1,000 (or $1).
#
#   bash scripts/crash-test.sh [CYCLES]
set -euo pipefail
cd "$(dirname "$0")/.."
DSNODE_CRASH_CYCLES="${1:-1000}" cargo test --test it kill9_crash_loop -- --nocapture
