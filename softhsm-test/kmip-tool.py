"""Provisions the test KMIP server (PyKMIP) the way a DSM administrator would: registers AES
keys of known value (and key-encryption keys), activates them, and prints their unique
identifiers. Objects belong to the client certificate's identity, so it runs with the same
certificate as the bridge.

    kmip-tool.py HOST PORT CERT KEY CA register NAME ALGORITHM HEX [kek]
    kmip-tool.py HOST PORT CERT KEY CA locate NAME
"""
import sys

from kmip.core import enums
from kmip.pie import objects
from kmip.pie.client import ProxyKmipClient


def main(argv):
    host, port, cert, key, ca, command = argv[1:7]
    client = ProxyKmipClient(
        hostname=host, port=int(port), cert=cert, key=key, ca=ca, config_file="/dev/null"
    )
    with client:
        if command == "register":
            name, algorithm, material = argv[7:10]
            kek = len(argv) > 10 and argv[10] == "kek"
            masks = [enums.CryptographicUsageMask.ENCRYPT, enums.CryptographicUsageMask.DECRYPT]
            if kek:
                masks += [enums.CryptographicUsageMask.WRAP_KEY, enums.CryptographicUsageMask.UNWRAP_KEY]
            value = bytes.fromhex(material)
            alg = {"aes": enums.CryptographicAlgorithm.AES,
                   "tdes": enums.CryptographicAlgorithm.TRIPLE_DES}[algorithm]
            obj = objects.SymmetricKey(alg, len(value) * 8, value, masks=masks, name=name)
            uid = client.register(obj)
            client.activate(uid)
            print(uid)
        elif command == "locate":
            print(" ".join(client.locate(attributes=[
                __import__("kmip.core.factories.attributes", fromlist=["AttributeFactory"])
                .AttributeFactory().create_attribute(enums.AttributeType.NAME, argv[7])])))
        else:
            raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv)
