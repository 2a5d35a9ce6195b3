"""Reads a dsnode ledger through its C2SP tlog-tiles endpoint with
aics-tlog, a tiles client no one in this project wrote, and checks one
entry's inclusion the way any transparency-log verifier would.

    python tiles_check.py BASE_URL VKEY INDEX LEAF_HASH_HEX

Prints one JSON object: the verified checkpoint, and whether the entry is
included at INDEX (and, as a control, at INDEX + 1, which must fail).
"""

import json
import sys

from aics_tlog import (
    HttpTileReader,
    VerifiedTileReader,
    inclusion_proof_from_tiles,
    parse_note,
    parse_vkey,
    verify_checkpoint,
    verify_inclusion,
)


def main() -> int:
    base, vkey, index, leaf_hex = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    leaf = bytes.fromhex(leaf_hex)
    reader = HttpTileReader([base], proxies={})
    note = parse_note(reader.read_checkpoint())
    key = parse_vkey(vkey)
    cp = verify_checkpoint(note, key, expected_origin=key.name)
    if not cp.ok:
        print(json.dumps({"checkpoint_verified": False, "error": str(cp.error)}))
        return 1
    tiles = VerifiedTileReader(reader, cp.size, cp.root)

    def included(i: int) -> bool:
        try:
            proof = inclusion_proof_from_tiles(tiles, i, cp.size)
        except Exception as e:  # a missing tile is a failure to prove
            return False
        return bool(verify_inclusion(leaf, i, cp.size, proof, cp.root))

    out = {
        "checkpoint_verified": True,
        "origin": cp.origin,
        "size": cp.size,
        "root": cp.root.hex(),
        "included": included(index),
        "included_at_next_index": included(index + 1) if index + 1 < cp.size else None,
        "proof_hashes": len(inclusion_proof_from_tiles(tiles, index, cp.size)),
    }
    print(json.dumps(out))
    return 0 if out["included"] else 1


if __name__ == "__main__":
    sys.exit(main())
