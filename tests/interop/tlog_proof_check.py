"""Checks a C2SP tlog-proof (c2sp.org/tlog-proof) taken from a dsnode
evidence bundle, knowing only that spec and the C2SP checkpoint, signed-note
and cosignature specs: the parsing below follows tlog-proof; the
signatures and the inclusion proof are checked with aics-tlog's primitives
(code no one in this project wrote).

    python tlog_proof_check.py PROOF_FILE ENTRY_B64 LOG_VKEY [WITNESS_VKEY]

Prints one JSON object and exits 0 only if the entry is proven included
(and, given a witness key, the checkpoint carries its valid cosignature).
"""

import base64
import hashlib
import json
import sys

from aics_tlog import parse_note, parse_vkey, verify_checkpoint, verify_inclusion

HEADER = b"c2sp.org/tlog-proof@v1"


def parse(data: bytes):
    head, sep, note = data.partition(b"\n\n")
    if not sep:
        raise ValueError("no empty line before the checkpoint")
    lines = head.split(b"\n")
    if lines[0] != HEADER:
        raise ValueError("the first line is not " + HEADER.decode())
    i = 1
    if i < len(lines) and lines[i].startswith(b"extra "):
        i += 1
    if i >= len(lines) or not lines[i].startswith(b"index "):
        raise ValueError("no index line")
    digits = lines[i][6:].decode("ascii")
    if not digits.isdigit() or (len(digits) > 1 and digits[0] == "0"):
        raise ValueError("a bad index")
    proof = [base64.b64decode(l, validate=True) for l in lines[i + 1 :]]
    if any(len(h) != 32 for h in proof):
        raise ValueError("a proof hash is not 32 bytes")
    return int(digits), proof, note


def main() -> int:
    data = open(sys.argv[1], "rb").read()
    entry = base64.b64decode(sys.argv[2])
    log_key = parse_vkey(sys.argv[3])
    witnesses = [parse_vkey(v) for v in sys.argv[4:]]
    try:
        index, proof, note = parse(data)
        cp = verify_checkpoint(
            parse_note(note), log_key, witnesses, len(witnesses), expected_origin=log_key.name
        )
        if not cp.ok:
            raise ValueError(f"checkpoint: {cp.error}")
        leaf = hashlib.sha256(b"\x00" + entry).digest()
        ok = bool(verify_inclusion(leaf, index, cp.size, proof, cp.root))
        out = {"ok": ok, "index": index, "size": cp.size, "witnesses": cp.witnesses}
    except ValueError as e:
        out = {"ok": False, "error": str(e)}
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
