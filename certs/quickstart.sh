#!/usr/bin/env bash
# Makes a data-space CA and two nodes with the dsnode CLI, starts both, and
# runs `peer hello` between them, then shows one refused connection (a
# revoked node). Everything lives in one directory (default: a new temp
# dir; pass a path to keep it). Nothing is downloaded.
#
#   bash certs/quickstart.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
DSNODE="$PWD/target/release/dsnode"
DIR="${1:-$(mktemp -d -t dsnode-quickstart.XXXXXX)}"
mkdir -p "$DIR"
cd "$DIR"
PUB_ADDR=127.0.0.1:17441
ENT_ADDR=127.0.0.1:17442

pids=()
cleanup() { for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

step "operator: create the data-space CA"
"$DSNODE" ca init --ca-dir ca --name "Demo City Data Space CA"

step "publisher and enterprise: create node identities"
"$DSNODE" init --data-dir transport --participant city-transport --ca-cert ca/ca.crt --listen "$PUB_ADDR" --metrics-listen 127.0.0.1:19441
"$DSNODE" init --data-dir acme --participant acme-logistics --ca-cert ca/ca.crt --listen "$ENT_ADDR" --metrics-listen 127.0.0.1:19442
"$DSNODE" init --data-dir regulator --participant city-data-regulator --ca-cert ca/ca.crt --listen 127.0.0.1:17443 --no-metrics

step "operator: sign their certificates and hand out the CRL"
"$DSNODE" ca issue --ca-dir ca --csr transport/node.csr --roles publisher --region CN-HE --out transport/node.crt
"$DSNODE" ca issue --ca-dir ca --csr acme/node.csr --roles consumer --region CN-HE --out acme/node.crt
"$DSNODE" ca issue --ca-dir ca --csr regulator/node.csr --roles auditor --out regulator/node.crt
for node in transport acme regulator; do cp ca/crl.pem "$node/crl.pem"; done

step "start both nodes (logs in $DIR/*.log)"
"$DSNODE" serve --data-dir transport 2>transport.log & pids+=($!)
"$DSNODE" serve --data-dir acme 2>acme.log & pids+=($!)
for _ in $(seq 50); do
  grep -q serving transport.log && grep -q serving acme.log && break
  sleep 0.1
done

step "acme says hello to the transport bureau"
"$DSNODE" peer hello --data-dir acme --peer "$PUB_ADDR"

step "and the other way round"
"$DSNODE" peer hello --data-dir transport --peer "$ENT_ADDR"

step "the transport bureau publishes hourly road-sensor counts under a policy"
cat > policy.toml <<'POLICY'
classification = "general"

[[permission]]
actions = ["read", "derive"]
purpose = ["route-planning", "research"]
roles = ["consumer"]
regions = ["CN-HE", "CN-BJ", "CN-TJ"]
grant_ttl = "30d"
max_fetches = 3

[[prohibition]]
actions = ["redistribute"]
POLICY
"$DSNODE" policy check policy.toml
{
  echo "hour,sensor,vehicles"
  for h in $(seq 0 23); do for s in $(seq 1 40); do echo "2026-11-26T$(printf %02d "$h"):00Z,S$s,$(( (h * 37 + s * 11) % 500 ))"; done; done
} > road-sensors.csv
"$DSNODE" publish --data-dir transport road-sensors.csv --policy policy.toml \
  --title "Hourly road-sensor counts" --description "Ring-road sensors, one day" --media-type text/csv

step "acme (a consumer in CN-HE) browses the catalog; every manifest signature is verified"
"$DSNODE" catalog --data-dir acme --peer "$PUB_ADDR"
DATASET=$("$DSNODE" catalog --data-dir acme --peer "$PUB_ADDR" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["datasets"][0]["dataset_id"])')

step "acme asks for access for route planning: granted (a grant signed by the bureau)"
GRANT=$("$DSNODE" request --data-dir acme --peer "$PUB_ADDR" "$DATASET" --purpose route-planning --for 7d --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["grant"]["grant_id"])')
"$DSNODE" grants list --data-dir acme

step "acme fetches it: every chunk verified, written, receipts exchanged"
"$DSNODE" fetch --data-dir acme --peer "$PUB_ADDR" "$GRANT" --out "$DIR/fetched-road-sensors.csv"
cmp road-sensors.csv fetched-road-sensors.csv && echo "fetched file is identical to the published one"

step "acme asks for access for marketing: refused, with the policy's reasons"
"$DSNODE" request --data-dir acme --peer "$PUB_ADDR" "$DATASET" --purpose marketing || true

step "mallory (another consumer) steals acme's grant file and presents it: refused"
"$DSNODE" init --data-dir mallory --participant mallory-data --ca-cert ca/ca.crt --listen 127.0.0.1:17444 --no-metrics >/dev/null
"$DSNODE" ca issue --ca-dir ca --csr mallory/node.csr --roles consumer --region CN-HE --out mallory/node.crt >/dev/null
cp ca/crl.pem mallory/crl.pem
mkdir -p mallory/grants/held
cp "acme/grants/held/$GRANT.json" "acme/grants/held/$GRANT.publisher" mallory/grants/held/
"$DSNODE" serve --data-dir mallory 2>mallory.log & pids+=($!)
for _ in $(seq 50); do grep -q serving mallory.log && break; sleep 0.1; done
if "$DSNODE" fetch --data-dir mallory --peer "$PUB_ADDR" "$GRANT" --out "$DIR/stolen.csv"; then
  echo "unexpected: a stolen grant was served" >&2
  exit 1
fi
test ! -e "$DIR/stolen.csv" && echo "nothing written to $DIR/stolen.csv"

step "the bureau lists the grants it issued"
"$DSNODE" grants list --data-dir transport

step "the bureau's operator scrapes its metrics (plain HTTP on loopback)"
python3 - <<'PY'
import urllib.request
text = urllib.request.urlopen("http://127.0.0.1:19441/metrics").read().decode()
for line in text.splitlines():
    if line.startswith(("dsnode_access_decisions", "dsnode_transfers", "dsnode_transfer_bytes", "dsnode_ledger_entries", "dsnode_rpc_requests_total{service=\"dataspace.v1.Exchange\"")):
        print(line)
print("readyz:", urllib.request.urlopen("http://127.0.0.1:19441/readyz").read().decode().strip())
PY

step "the regulator audits the transport bureau's ledger (every signature and proof verified)"
"$DSNODE" audit checkpoint --data-dir regulator --peer "$PUB_ADDR"
"$DSNODE" audit entries --data-dir regulator --peer "$PUB_ADDR"

step "and acme's ledger: the same story from the consumer's side"
"$DSNODE" audit entries --data-dir regulator --peer "$ENT_ADDR" --dataset "$DATASET"

step "operator revokes acme; the transport bureau reloads its CRL"
"$DSNODE" ca revoke --ca-dir ca --cert acme/node.crt
cp ca/crl.pem transport/crl.pem
kill -HUP "${pids[0]}"
sleep 0.5

step "acme is now refused"
if "$DSNODE" peer hello --data-dir acme --peer "$PUB_ADDR"; then
  echo "unexpected: a revoked node was served" >&2
  exit 1
fi
grep "handshake refused" transport.log | tail -1

step "done; files are in $DIR"
