#!/usr/bin/env bash
# A data space of N nodes on this machine (issue 19): N `dsnode serve`
# processes with a witness ring, each publishing and fetching from the
# next two, a regulator auditing every ledger; prints each phase's time,
# the audit's result and the idle nodes' memory. See examples/space.rs.
#
#   bash scripts/space.sh [N]     (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
cargo run --release --quiet --example space -- "${1:-30}"
