#!/usr/bin/env python3
"""An interoperability client for dsnode, written from proto/ and docs/wire.md
only, with code no one in this project wrote: grpcio (and its BoringSSL TLS),
grpc_tools' protoc, securesystemslib (DSSE) and cryptography (X.509,
Ed25519). Run by tests/it/interop.rs; see tests/interop/README.md.

Every step prints one `ok ...` line; the exit status is 0 only if every
check passed (any failure raises, which exits non-zero).
"""

import argparse
import base64
import hashlib
import os
import sys
import tempfile

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from grpc_tools import protoc
from securesystemslib.dsse import Envelope as DsseEnvelope
from securesystemslib.signer import Signature, SSlibKey

MANIFEST_TYPE = "application/vnd.dsnode.manifest.v1+protobuf"


def fail(msg):
    raise SystemExit(f"FAIL {msg}")


def generate_stubs(proto_dir, out_dir):
    """Compiles proto/ with grpc_tools' protoc into out_dir, importable."""
    files = [
        os.path.relpath(os.path.join(root, name), proto_dir)
        for root, _, names in os.walk(proto_dir)
        for name in names
        if name.endswith(".proto")
    ]
    args = ["protoc", f"-I{proto_dir}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"]
    if protoc.main(args + sorted(files)) != 0:
        fail("protoc could not compile proto/")
    sys.path.insert(0, out_dir)


def node_id(public_key):
    """docs/wire.md section 1 (Identifiers): `dsn1` + the first 26 characters of
    base32 (lower case, no padding) of SHA-256(raw 32-byte Ed25519 key)."""
    b32 = base64.b32encode(hashlib.sha256(public_key).digest()).decode().lower()
    return "dsn1" + b32[:26]


def ed25519_from_certificate(path):
    """docs/wire.md section 6 (Where the identity sits in the certificate): the
    SAN URI `urn:dsnode:ed25519:<key>`, 32 raw bytes in unpadded base64url."""
    with open(path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = [
        u for u in san.get_values_for_type(x509.UniformResourceIdentifier)
        if u.startswith("urn:dsnode:ed25519:")
    ]
    if len(uris) != 1:
        fail(f"{path}: {len(uris)} urn:dsnode:ed25519 SAN URIs, expected exactly one")
    b64 = uris[0][len("urn:dsnode:ed25519:"):]
    key = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
    if len(key) != 32:
        fail(f"{path}: the ed25519 SAN key is {len(key)} bytes")
    return key


def channel(addr, ca, cert, key):
    """docs/wire.md section 6 (TLS profile): mutual TLS 1.3, the data-space CA
    the only trust anchor, the node certificate and its P-256 `tls.key`."""
    def read(p):
        with open(p, "rb") as f:
            return f.read()
    creds = grpc.ssl_channel_credentials(
        root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert)
    )
    return grpc.secure_channel(addr, creds)


def leaf_hash(entry):
    # docs/wire.md section 3 (Leaf hash): SHA-256(0x00 ‖ entry bytes).
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left, right):
    # docs/wire.md section 3 (Leaf hash): interior node SHA-256(0x01 ‖ left ‖ right).
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_inclusion(index, size, leaf, proof, root):
    """RFC 9162 section 2.1.3.2, as docs/wire.md section 3 (Leaf hash) says the
    proofs of Ledger.ProveInclusion are."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if len(p) != 32 or sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not (fn & 1) and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_checkpoint(note, origin, public_key):
    """docs/wire.md section 4 (Signed notes, Checkpoints): text, an empty line,
    signature lines `— <name> <base64(key id ‖ sig)>`; key id = first 4 bytes
    of SHA-256(name ‖ 0x0A ‖ 0x01 ‖ key); Ed25519 over the text. Returns
    (size, root)."""
    text, sep, sigs = note.decode("utf-8").partition("\n\n")
    if not sep:
        fail("checkpoint: no empty line before the signatures")
    text += "\n"
    key_id = hashlib.sha256(origin.encode() + b"\x0a\x01" + public_key).digest()[:4]
    verifier = Ed25519PublicKey.from_public_bytes(public_key)
    verified = 0
    for line in sigs.splitlines():
        if not line.startswith("\u2014 "):
            fail(f"checkpoint: not a signature line: {line!r}")
        name, _, blob = line[2:].partition(" ")
        raw = base64.b64decode(blob, validate=True)
        if name != origin or raw[:4] != key_id:
            continue  # another key's line (a witness): ignored
        verifier.verify(raw[4:], text.encode())  # raises InvalidSignature
        verified += 1
    if verified == 0:
        fail(f"checkpoint: no signature line by {origin} key id {key_id.hex()}")
    lines = text.split("\n")
    # docs/wire.md section 4 (Checkpoints): origin, size, base64 root.
    if lines[0] != origin:
        fail(f"checkpoint origin {lines[0]!r}, expected {origin!r}")
    size = int(lines[1])
    if str(size) != lines[1]:
        fail(f"checkpoint size {lines[1]!r} is not canonical decimal")
    root = base64.b64decode(lines[2], validate=True)
    if len(root) != 32:
        fail("checkpoint root is not 32 bytes")
    return size, root, key_id


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--addr", required=True, help="the publisher's host:port")
    ap.add_argument("--proto", required=True, help="the proto/ directory")
    ap.add_argument("--ca", required=True, help="the data-space CA certificate")
    ap.add_argument("--cert", required=True, help="the consumer's node.crt")
    ap.add_argument("--key", required=True, help="the consumer's tls.key")
    ap.add_argument("--auditor-cert", required=True)
    ap.add_argument("--auditor-key", required=True)
    ap.add_argument("--publisher-cert", required=True)
    ap.add_argument("--publisher-key-hex", required=True,
                    help="the publisher's Ed25519 public key, hex")
    ap.add_argument("--title", required=True, help="the dataset to look for")
    ap.add_argument("--purpose", required=True, help="a purpose the policy allows")
    ap.add_argument("--denied-purpose", required=True, help="a purpose it does not list")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="dsnode-interop-") as out:
        generate_stubs(args.proto, out)
        run(args)
    return 0


def run(args):
    from dataspace.v1 import catalog_pb2, catalog_pb2_grpc
    from dataspace.v1 import exchange_pb2, exchange_pb2_grpc
    from dataspace.v1 import ledger_pb2, ledger_pb2_grpc
    from dsnode.payload.v1 import payload_pb2

    publisher_key = ed25519_from_certificate(args.publisher_cert)
    if publisher_key.hex() != args.publisher_key_hex.lower():
        fail("the publisher key in its certificate differs from the one given")
    publisher_id = node_id(publisher_key)

    consumer = channel(args.addr, args.ca, args.cert, args.key)

    # Catalog.ListDatasets
    catalog = catalog_pb2_grpc.CatalogStub(consumer)
    listed = catalog.ListDatasets(catalog_pb2.ListDatasetsRequest(), timeout=20)
    found = None
    for entry in listed.datasets:
        if entry.manifest.payload_type != MANIFEST_TYPE:
            continue
        m = payload_pb2.ManifestV1()
        m.ParseFromString(entry.manifest.payload)
        if m.title == args.title:
            found = entry
    if found is None:
        fail(f"catalog: no dataset titled {args.title!r} among {len(listed.datasets)}")
    dataset_id = found.dataset_id
    # docs/wire.md section 1 (Identifiers) and section 2 (The hash of a signed
    # object): `ds_` + base32(SHA-256(the manifest payload bytes)).
    payload_hash = hashlib.sha256(found.manifest.payload).digest()
    expected_id = "ds_" + base64.b32encode(payload_hash).decode().lower().rstrip("=")
    if dataset_id != expected_id:
        fail(f"catalog: dataset id {dataset_id} is not {expected_id}")
    print(f"ok catalog: {dataset_id} ({args.title!r}, {len(listed.datasets)} listed)")

    # docs/wire.md section 2 (PAE, Envelope forms): DSSE, Ed25519 over
    # PAE(type, payload); sig is the raw 64 bytes; keyid is the node id.
    env = found.manifest
    key = SSlibKey(publisher_id, "ed25519", "ed25519", {"public": publisher_key.hex()})
    dsse = DsseEnvelope(
        payload=env.payload,
        payload_type=env.payload_type,
        signatures={s.keyid: Signature(s.keyid, s.sig.hex()) for s in env.signatures},
    )
    verified = dsse.verify([key], 1)
    if publisher_id not in verified:
        fail("manifest: not signed by the publisher's key")
    manifest = payload_pb2.ManifestV1()
    manifest.ParseFromString(env.payload)
    # docs/wire.md section 2 (Envelope forms): the payload names its signer.
    if manifest.publisher != publisher_id:
        fail(f"manifest: publisher {manifest.publisher}, signer {publisher_id}")
    print(f"ok manifest signature (securesystemslib): signed by {publisher_id}, "
          f"{manifest.size} bytes, {manifest.chunk_count} chunks")

    # Exchange.RequestAccess: granted, then refused.
    exchange = exchange_pb2_grpc.ExchangeStub(consumer)
    answer = exchange.RequestAccess(
        exchange_pb2.RequestAccessRequest(
            dataset_id=dataset_id, purpose=args.purpose, actions=["read"]
        ),
        timeout=20,
    )
    grant_env = answer.grant
    if grant_env.payload_type != "application/vnd.dsnode.grant.v1+protobuf":
        fail(f"grant payload type {grant_env.payload_type}")
    grant_dsse = DsseEnvelope(
        payload=grant_env.payload,
        payload_type=grant_env.payload_type,
        signatures={s.keyid: Signature(s.keyid, s.sig.hex()) for s in grant_env.signatures},
    )
    grant_dsse.verify([key], 1)
    grant = payload_pb2.GrantV1()
    grant.ParseFromString(grant_env.payload)
    # docs/wire.md section 2 (Payload types): manifest_sha256 is the manifest's hash.
    if grant.manifest_sha256 != payload_hash or grant.dataset_id != dataset_id:
        fail("grant: not for this manifest")
    print(f"ok access granted: {grant.grant_id} for {args.purpose!r}, signed by the publisher")

    try:
        exchange.RequestAccess(
            exchange_pb2.RequestAccessRequest(
                dataset_id=dataset_id, purpose=args.denied_purpose, actions=["read"]
            ),
            timeout=20,
        )
        fail(f"access for {args.denied_purpose!r} was granted")
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.PERMISSION_DENIED:
            fail(f"refusal code {e.code()}, expected PERMISSION_DENIED: {e.details()}")
        if args.denied_purpose not in e.details():
            fail(f"refusal does not give the policy's reason: {e.details()}")
        print(f"ok access refused: PERMISSION_DENIED: {e.details()}")

    # Exchange.Fetch, every byte checked (docs/wire.md section 2, Chunk-list hash).
    header = None
    content = bytearray()
    for part in exchange.Fetch(exchange_pb2.FetchRequest(grant_id=grant.grant_id), timeout=60):
        if part.WhichOneof("part") == "header":
            if header is not None:
                fail("fetch: a second header")
            header = part.header
        elif header is None:
            fail("fetch: a chunk before the header")
        else:
            content.extend(part.chunk)
    if header is None:
        fail("fetch: no header")
    if header.manifest.payload != env.payload:
        fail("fetch: the header's manifest is not the catalog's")
    hashes = list(header.chunk_hashes)
    if len(hashes) != manifest.chunk_count:
        fail(f"fetch: {len(hashes)} chunk hashes, the manifest says {manifest.chunk_count}")
    if hashlib.sha256(b"".join(hashes)).digest() != manifest.chunk_list_sha256:
        fail("fetch: the chunk list does not hash to chunk_list_sha256")
    if len(content) != manifest.size:
        fail(f"fetch: {len(content)} bytes, the manifest says {manifest.size}")
    for i, expected in enumerate(hashes):
        chunk = content[i * manifest.chunk_size:(i + 1) * manifest.chunk_size]
        if hashlib.sha256(chunk).digest() != expected:
            fail(f"fetch: chunk {i} does not match its hash")
    if hashlib.sha256(content).digest() != manifest.content_sha256:
        fail("fetch: the content does not hash to content_sha256")
    print(f"ok fetched {len(content)} bytes, {len(hashes)} chunks verified")
    consumer.close()

    # As an auditor: the checkpoint, then an inclusion proof.
    auditor = channel(args.addr, args.ca, args.auditor_cert, args.auditor_key)
    ledger = ledger_pb2_grpc.LedgerStub(auditor)
    cp = ledger.GetCheckpoint(ledger_pb2.GetCheckpointRequest(), timeout=20)
    if cp.key_rotations:
        fail("the publisher rotated its key; this client does not follow rotations")
    # docs/wire.md section 1 (Identifiers): log origin `dsnode/` + node id.
    origin = "dsnode/" + publisher_id
    size, root, key_id = verify_checkpoint(cp.checkpoint, origin, publisher_key)
    # docs/wire.md section 4 (Signed notes): vkey `<name>+<hex key id>+<base64(0x01 ‖ key)>`.
    vkey_key = base64.b64encode(b"\x01" + publisher_key).decode()
    vkey = f"{origin}+{key_id.hex()}+{vkey_key}"
    if cp.vkey != vkey:
        fail(f"vkey {cp.vkey!r}, expected {vkey!r}")
    print(f"ok checkpoint size {size} signed by {origin} (key id {key_id.hex()})")

    proved = ledger.ProveInclusion(ledger_pb2.ProveInclusionRequest(index=1, tree_size=size),
                                   timeout=20)
    if proved.entry.index != 1:
        fail(f"proof for entry {proved.entry.index}, asked for 1")
    if proved.checkpoint:
        size2, root2, _ = verify_checkpoint(proved.checkpoint, origin, publisher_key)
        if (size2, root2) != (size, root):
            fail("the proof's checkpoint is not the one verified")
    entry = proved.entry.entry
    if not verify_inclusion(1, size, leaf_hash(entry), list(proved.entry.inclusion_proof), root):
        fail("the inclusion proof of entry 1 does not verify")
    # docs/wire.md section 3: entry 1 is DatasetPublished (kind 2) of this dataset,
    # its object hash the manifest's hash.
    if entry[0] != 2 or int.from_bytes(entry[17:19], "big") != 2 or payload_hash not in entry:
        fail("entry 1 is not the DatasetPublished entry of this manifest")
    print(f"ok inclusion of entry 1 in size {size}")
    auditor.close()


if __name__ == "__main__":
    sys.exit(main())
