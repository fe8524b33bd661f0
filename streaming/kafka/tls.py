"""The local broker's TLS identity: a self-signed certificate made with the JDK's `keytool`.

`ensure_certificate` writes, once, into the broker's `tls/` folder: `broker.p12` (PKCS12 key and
certificate, for the broker), `ca.pem` (the certificate alone, for clients to trust: librdkafka's
`ssl.ca.location` and Spark's PEM truststore read the same file) and `keystore.password` (random,
owner-only). The certificate names 127.0.0.1 and localhost, so clients keep hostname checks on.
Development and tests only: production brokers (MSK) present certificates from a real CA.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

from streaming.errors import SetupError

KEYSTORE = "broker.p12"
CERTIFICATE = "ca.pem"
PASSWORD = "keystore.password"
VALID_DAYS = 825


def ensure_certificate(folder: Path, name: str = "lakehouse-local-kafka") -> Path:
    """Make the key pair and certificate unless they exist; return the certificate's path."""
    certificate = folder / CERTIFICATE
    if certificate.is_file() and (folder / KEYSTORE).is_file() and (folder / PASSWORD).is_file():
        return certificate
    folder.mkdir(parents=True, exist_ok=True)
    for stale in (KEYSTORE, CERTIFICATE, PASSWORD):
        (folder / stale).unlink(missing_ok=True)
    password = secrets.token_urlsafe(24)
    secret = folder / PASSWORD
    secret.touch(mode=0o600)
    secret.write_text(password)
    keystore = str(folder / KEYSTORE)
    # The password reaches keytool through its environment (`:env`), never its command line.
    env = {**os.environ, "LAKEHOUSE_KEYSTORE_PASSWORD": password}
    store = ["-keystore", keystore, "-storetype", "PKCS12",
             "-storepass:env", "LAKEHOUSE_KEYSTORE_PASSWORD"]  # fmt: skip
    _keytool(
        ["-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048",
         "-validity", str(VALID_DAYS), "-dname", f"CN={name}",
         "-ext", "SAN=ip:127.0.0.1,dns:localhost", *store],
        env,
    )  # fmt: skip
    pem = _keytool(["-exportcert", "-rfc", "-alias", "broker", *store], env)
    certificate.write_text(pem)
    return certificate


def listener_properties(folder: Path, listener: str) -> list[str]:
    """server.properties lines that give `listener` the key and certificate in `folder`."""
    password = (folder / PASSWORD).read_text().strip()
    prefix = f"listener.name.{listener}.ssl"
    return [
        f"{prefix}.keystore.type=PKCS12",
        f"{prefix}.keystore.location={folder / KEYSTORE}",
        f"{prefix}.keystore.password={password}",
        f"{prefix}.key.password={password}",
    ]


def _keytool(arguments: list[str], env: dict[str, str]) -> str:
    try:
        result = subprocess.run(
            ["keytool", *arguments], env=env, capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise SetupError(
            "keytool (part of the JDK) is not on PATH", hint="install OpenJDK 17"
        ) from None
    if result.returncode != 0:
        raise SetupError(f"keytool failed: {(result.stderr or result.stdout).strip()[-400:]}")
    return result.stdout
