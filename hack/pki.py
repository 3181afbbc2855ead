"""Make the local cluster's certificates and kubeconfigs, once (idempotent).

Why a script of our own: there is no kubeadm here, and the control plane needs a CA, a serving cert for the
API server, client certs for admin (system:masters), controller-manager and scheduler, and a service-account
key pair. Existing files are kept, so a restart keeps every client's kubeconfig valid.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_FOR = datetime.timedelta(days=365)


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def write_key(key: rsa.RSAPrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def name(common_name: str, organization: str | None = None) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        parts.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(parts)


def make_ca(directory: Path) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    if cert_path.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key
    key = new_key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("finetune-operator-local-ca"))
        .issuer_name(name("finetune-operator-local-ca"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALID_FOR * 5)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    write_key(key, key_path)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def make_leaf(
    directory: Path,
    stem: str,
    ca: tuple[x509.Certificate, rsa.RSAPrivateKey],
    subject: x509.Name,
    *,
    server_names: list[str] | None = None,
    client: bool = True,
) -> None:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    if cert_path.exists() and key_path.exists():
        return
    ca_cert, ca_key = ca
    key = new_key()
    now = datetime.datetime.now(datetime.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if server_names:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        sans: list[x509.GeneralName] = []
        for entry in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(entry)))
            except ValueError:
                sans.append(x509.DNSName(entry))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    write_key(key, key_path)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def write_kubeconfig(path: Path, server: str, pki: Path, user: str) -> None:
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: {server}
    certificate-authority: {pki / "ca.crt"}
users:
- name: {user}
  user:
    client-certificate: {pki / f"{user}.crt"}
    client-key: {pki / f"{user}.key"}
contexts:
- name: local
  context: {{cluster: local, user: {user}, namespace: default}}
current-context: local
""")
    path.chmod(0o600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--server", required=True, help="API server URL, e.g. https://127.0.0.1:26443")
    parser.add_argument("--service-ip", default="10.0.0.1")
    parser.add_argument("--node-name", action="append", default=[], help="a real node to make kubelet certs for")
    parser.add_argument(
        "--node-address",
        action="append",
        default=[],
        help="an address the kubelet serves on (in its serving certificate)",
    )
    args = parser.parse_args()
    pki = args.state / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    ca = make_ca(pki)
    make_leaf(
        pki,
        "apiserver",
        ca,
        name("kube-apiserver"),
        client=False,
        server_names=[
            "127.0.0.1",
            args.service_ip,
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ],
    )
    make_leaf(pki, "apiserver-kubelet-client", ca, name("kube-apiserver-kubelet-client", "system:masters"))
    clients = {
        "admin": name("admin", "system:masters"),
        "controller-manager": name("system:kube-controller-manager"),
        "scheduler": name("system:kube-scheduler"),
    }
    for node in args.node_name:
        clients[f"kubelet-{node}"] = name(f"system:node:{node}", "system:nodes")
        make_leaf(
            pki,
            f"kubelet-serving-{node}",
            ca,
            name(f"system:node:{node}", "system:nodes"),
            server_names=["127.0.0.1", "localhost", node, *args.node_address],
        )
    for user, subject in clients.items():
        make_leaf(pki, user, ca, subject)
        write_kubeconfig(
            args.state / (f"{user}.kubeconfig" if user != "admin" else "kubeconfig"), args.server, pki, user
        )
    if not (pki / "sa.key").exists():
        sa_key = new_key()
        write_key(sa_key, pki / "sa.key")
        (pki / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


if __name__ == "__main__":
    main()
