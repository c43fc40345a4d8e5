#!/usr/bin/env python3
"""A backend in another language calls the BIMIP backend API (proto/bimip_admin.proto) with grpcio.

    python examples/backend/admin_client.py 127.0.0.1:7423 bimip-data/admin-secret

Stubs are generated from the .proto at start (grpcio-tools, no system protoc). It mints a token, lists the user's
sessions, pushes a notification, reads awareness and stats, and checks that a wrong secret and a bad EID get
UNAUTHENTICATED and INVALID_ARGUMENT. Exit 0 when every answer is as expected; CI runs it (.ci/run).
"""

import pathlib
import sys
import tempfile

import grpc
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load_stubs(out: pathlib.Path):
    code = protoc.main(
        ["protoc", f"-I{ROOT / 'proto'}", f"--python_out={out}", f"--grpc_python_out={out}", "bimip_admin.proto"]
    )
    if code != 0:
        sys.exit(f"protoc failed ({code})")
    sys.path.insert(0, str(out))
    import bimip_admin_pb2 as pb
    import bimip_admin_pb2_grpc as rpc

    return pb, rpc


def main() -> int:
    address, secret_file = sys.argv[1], sys.argv[2]
    secret = pathlib.Path(secret_file).read_text().splitlines()[0].strip()
    with tempfile.TemporaryDirectory() as out:
        pb, rpc = load_stubs(pathlib.Path(out))
        with grpc.insecure_channel(address) as channel:
            admin = rpc.AdminStub(channel)
            auth = [("authorization", f"Bearer {secret}")]

            minted = admin.MintToken(
                pb.MintTokenRequest(eid="alice@example.com", device_id="phone", lifetime_s=600), metadata=auth
            )
            assert minted.token.count(".") == 2 and minted.jti, minted
            print(f"MintToken: jti {minted.jti}, expires at {minted.expires_at}")

            sessions = admin.ListSessions(pb.User(eid="alice@example.com"), metadata=auth)
            print(f"ListSessions: {len(sessions.sessions)} session(s)")

            pushed = admin.Push(
                pb.PushRequest(eid="alice@example.com", type="billing", data={"due": "today"}), metadata=auth
            )
            print(f"Push: reached {pushed.devices} device(s)")

            awareness = admin.GetAwareness(pb.User(eid="alice@example.com"), metadata=auth)
            assert (awareness.visibility, awareness.location_sharing) == (2, 2), awareness
            stats = admin.GetStats(pb.StatsRequest(), metadata=auth)
            print(f"GetStats: node {stats.node}, {stats.shards} shard(s), {stats.connections} connection(s)")

            for call, metadata, expected in [
                (lambda m: admin.GetStats(pb.StatsRequest(), metadata=m), [("authorization", "Bearer wrong")],
                 grpc.StatusCode.UNAUTHENTICATED),
                (lambda m: admin.GetStats(pb.StatsRequest(), metadata=m), [], grpc.StatusCode.UNAUTHENTICATED),
                (lambda m: admin.MintToken(pb.MintTokenRequest(eid="not an eid", device_id="x"), metadata=m), auth,
                 grpc.StatusCode.INVALID_ARGUMENT),
            ]:
                try:
                    call(metadata)
                except grpc.RpcError as error:
                    assert error.code() == expected, (error.code(), expected)
                    print(f"refused as expected: {error.code().name}: {error.details()}")
                else:
                    raise AssertionError(f"expected {expected.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
