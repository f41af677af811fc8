"""A single-node KRaft broker that takes clients only over mutual TLS, for the TLS tests.

The session's broker (``conftest.py``) is PLAINTEXT: it cannot show that Vigil's clients present
a certificate, nor that a client without one is refused.  This one, like
:mod:`tests.integration.acl_broker`, is a
:class:`~tests.integration.throwaway_broker.ThrowawayBroker` (loopback, free ports, a temporary
directory):

- clients: ``SSL`` with ``ssl.client.auth=required``: the client must show a certificate
  signed by the test CA.  The broker's keystore and truststore are PEM files
  (``ssl.keystore.type=PEM``), so no ``keytool`` and no JKS;
- controller: ``PLAINTEXT`` on loopback (nothing here is about the controller; no authorizer).

Every certificate is made with ``openssl`` when the broker is made: a CA, the broker's (for
``127.0.0.1`` and ``localhost``, which librdkafka checks: ``ssl.endpoint.identification.algorithm``
is ``https`` by default), a client's with its key encrypted under :data:`KEY_PASSWORD`, and, from
a CA the broker does not trust, a stranger's.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.integration.throwaway_broker import ThrowawayBroker

from vigil.config import Settings, load_settings

#: The client key's password (a test key's; nothing else reads it).
KEY_PASSWORD = "client-key-hunter2"  # noqa: S105 - a test key's password


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        msg = f"openssl {' '.join(args[:2])} failed: {(done.stdout + done.stderr)[-800:]}"
        raise RuntimeError(msg)


class Certificates:
    """The PEM files of a test PKI under ``root``: :attr:`ca`, the broker's keystore and the
    client's certificate and (encrypted) key, and a stranger's pair from another CA."""

    def __init__(self, root: Path) -> None:
        if shutil.which("openssl") is None:
            msg = "the TLS tests make their certificates with openssl, which is not installed"
            raise RuntimeError(msg)
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.ca = self._ca("vigil-test-ca")
        self._ca("stranger-ca")
        # The broker's certificate names the address clients dial; its chain and key, PKCS#8
        # unencrypted (what a PEM keystore takes without ssl.key.password), are its keystore.
        self._issue("broker", "vigil-test-ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        self.keystore = root / "broker-keystore.pem"
        self.keystore.write_text(
            (root / "broker.key").read_text() + (root / "broker.pem").read_text() + self.ca.read_text()
        )
        self.client_certificate = self._issue("vigil-client", "vigil-test-ca", "")
        self.client_key = root / "vigil-client-encrypted.key"
        _openssl(
            "pkcs8", "-topk8", "-in", "vigil-client.key", "-out", self.client_key.name,
            "-passout", f"pass:{KEY_PASSWORD}", cwd=root,
        )  # fmt: skip
        self.stranger_certificate = self._issue("stranger", "stranger-ca", "")
        self.stranger_key = root / "stranger.key"

    def _ca(self, name: str) -> Path:
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.pem",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=self.root,
        )  # fmt: skip
        return self.root / f"{name}.pem"

    def _issue(self, name: str, ca: str, extensions: str) -> Path:
        """``name``.pem signed by CA ``ca``, with ``name``.key (PKCS#8, unencrypted)."""
        ext = self.root / f"{name}.ext"
        ext.write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth,clientAuth\n" + extensions
        )
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=self.root,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-extfile", ext.name, "-out", f"{name}.pem",
            cwd=self.root,
        )  # fmt: skip
        return self.root / f"{name}.pem"


class TlsBroker(ThrowawayBroker):
    """Mutual TLS for clients, a PLAINTEXT controller on loopback (see the module)."""

    kind = "TLS"

    def __init__(self, root: Path, start_timeout_s: float = 90.0) -> None:
        super().__init__(root, start_timeout_s)
        self.certs = Certificates(root / "pki")

    def settings(self, *, certificate: Path | None = None, key: Path | None = None, **more: Any) -> Settings:
        """The settings of a Vigil process that trusts the test CA and shows ``certificate`` with
        ``key`` (default: the client's, its key encrypted under :data:`KEY_PASSWORD`); in
        production, ``VIGIL_KAFKA_SSL_*``.  A client that shows none: :meth:`anonymous`."""
        certs = self.certs
        given: dict[str, Any] = {
            "kafka_bootstrap": self.bootstrap,
            "kafka_security_protocol": "SSL",
            "kafka_ssl_ca_location": certs.ca,
            "kafka_ssl_certificate_location": certificate or certs.client_certificate,
            "kafka_ssl_key_location": key or certs.client_key,
            "kafka_ssl_key_password": KEY_PASSWORD if key is None else None,
            "home": self.root / "home",
        }
        return load_settings(**{**given, **more})

    def anonymous(self) -> Settings:
        """A client that trusts the broker but shows no certificate of its own."""
        return load_settings(
            kafka_bootstrap=self.bootstrap,
            kafka_security_protocol="SSL",
            kafka_ssl_ca_location=self.certs.ca,
            home=self.root / "home",
        )

    def listener_properties(self) -> dict[str, Any]:
        certs = self.certs
        return {
            **self.listeners("SSL", "PLAINTEXT"),
            "ssl.client.auth": "required",
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": certs.keystore,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": certs.ca,
        }

    def ready_config(self) -> dict[str, Any]:
        return self.settings().kafka_client_config()
