"""The study CA: bundles that authenticate, and every certificate that must be refused."""

from __future__ import annotations

import datetime as dt
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedcare.core.errors import ConfigError, ProtocolError
from fedcare.net.tls import (
    TlsBundle,
    check_peer_certificate,
    identity_of,
    init_study_ca,
    issue_bundle,
    issued,
    load_revoked,
    revoke,
    signing_key_of,
    signing_keys,
)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One CA with a coordinator and two hospitals (key generation is the slow part)."""
    root = tmp_path_factory.mktemp("study")
    ca = init_study_ca(root / "ca", "heart")
    issue_bundle(ca, "coordinator", root / "coordinator", "coordinator", hosts=["localhost", "::1"])
    issue_bundle(ca, "cleveland", root / "cleveland", "site")
    issue_bundle(ca, "hungarian", root / "hungarian", "site")
    return root


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_site_bundle_loads_and_names_its_hospital(study):
    bundle = TlsBundle.load(study / "cleveland")
    assert (bundle.name, bundle.role, bundle.study) == ("cleveland", "site", "heart")
    assert identity_of(bundle.cert_pem) == "cleveland"
    assert check_peer_certificate(bundle.cert_pem, bundle.ca_pem, set(), role="site") == "cleveland"


def test_private_keys_are_owner_only_and_public_files_are_not(study):
    assert mode(study / "ca" / "ca.key") == 0o600
    for name in ("cleveland", "coordinator"):
        assert mode(study / name / "key.pem") == 0o600
        assert mode(study / name / "signing.key") == 0o600
        assert mode(study / name / "cert.pem") == 0o644


def test_a_key_readable_by_others_is_refused_with_the_fix(study, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(study / "hungarian", copy)
    (copy / "key.pem").chmod(0o644)
    with pytest.raises(ConfigError, match=r"readable by others.*chmod 600"):
        TlsBundle.load(copy)


def test_the_audit_key_travels_inside_the_certificate(study):
    bundle = TlsBundle.load(study / "hungarian")
    assert signing_key_of(bundle.cert_pem) == bundle.signing_public_key()
    signature = bundle.signing_private_key().sign(b"round 3 started")
    signing_key_of(bundle.cert_pem).verify(signature, b"round 3 started")
    assert signing_keys(study / "ca")["hungarian"] == [bundle.signing_public_key()]


def test_a_certificate_from_another_ca_is_refused(study, tmp_path):
    other = init_study_ca(tmp_path / "other-ca", "heart")  # same study name, different key
    issue_bundle(other, "cleveland", tmp_path / "impostor", "site")
    impostor = TlsBundle.load(tmp_path / "impostor")
    ca_pem = (study / "ca" / "ca.crt").read_bytes()
    with pytest.raises(ProtocolError, match="not issued by this study's CA"):
        check_peer_certificate(impostor.cert_pem, ca_pem, set())


def test_the_ca_certificate_itself_is_not_a_party(study):
    ca_pem = (study / "ca" / "ca.crt").read_bytes()
    with pytest.raises(ProtocolError, match="CA certificate"):
        check_peer_certificate(ca_pem, ca_pem, set(), role=None)


def test_a_site_cannot_pose_as_the_coordinator_or_the_reverse(study):
    site = TlsBundle.load(study / "cleveland")
    coord = TlsBundle.load(study / "coordinator")
    with pytest.raises(ProtocolError, match="role 'site', expected 'coordinator'"):
        check_peer_certificate(site.cert_pem, site.ca_pem, set(), role="coordinator")
    with pytest.raises(ProtocolError, match="expected 'site'"):
        check_peer_certificate(coord.cert_pem, coord.ca_pem, set(), role="site")
    assert check_peer_certificate(coord.cert_pem, coord.ca_pem, set(), role="coordinator") == (
        "coordinator"
    )


def test_an_expired_or_not_yet_valid_certificate_is_refused(study):
    site = TlsBundle.load(study / "cleveland")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=731)
    with pytest.raises(ProtocolError, match="not valid at"):
        check_peer_certificate(site.cert_pem, site.ca_pem, set(), now=later)
    earlier = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    with pytest.raises(ProtocolError, match="not valid at"):
        check_peer_certificate(site.cert_pem, site.ca_pem, set(), now=earlier)


def test_a_short_lived_certificate_expires_when_its_validity_ends(tmp_path):
    ca = init_study_ca(tmp_path / "ca", "s")
    issue_bundle(ca, "site-a", tmp_path / "a", "site", valid_days=1)
    bundle = TlsBundle.load(tmp_path / "a")
    in_two_days = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    with pytest.raises(ProtocolError, match="ask the coordinating centre for a new bundle"):
        check_peer_certificate(bundle.cert_pem, bundle.ca_pem, set(), now=in_two_days)


def test_a_revoked_certificate_is_refused_and_listed(tmp_path):
    ca = init_study_ca(tmp_path / "ca", "s")
    issue_bundle(ca, "va", tmp_path / "va", "site")
    bundle = TlsBundle.load(tmp_path / "va")
    assert check_peer_certificate(bundle.cert_pem, bundle.ca_pem, load_revoked(ca)) == "va"

    serials = revoke(ca, "va")
    assert len(serials) == 1
    assert revoke(ca, "va") == []  # revoking twice changes nothing
    with pytest.raises(ProtocolError, match="revoked"):
        check_peer_certificate(bundle.cert_pem, bundle.ca_pem, load_revoked(ca))
    assert load_revoked(ca / "revoked.json") == set(serials)
    assert [(c.name, c.revoked) for c in issued(ca)] == [("va", True)]


def test_reissued_site_keeps_old_audit_keys_verifiable(tmp_path):
    ca = init_study_ca(tmp_path / "ca", "s")
    issue_bundle(ca, "va", tmp_path / "va1", "site")
    revoke(ca, "va")
    issue_bundle(ca, "va", tmp_path / "va2", "site")
    new = TlsBundle.load(tmp_path / "va2")
    assert check_peer_certificate(new.cert_pem, new.ca_pem, load_revoked(ca)) == "va"
    assert len(signing_keys(ca)["va"]) == 2


def test_revoking_an_unknown_name_says_so(tmp_path):
    ca = init_study_ca(tmp_path / "ca", "s")
    with pytest.raises(ConfigError, match="no certificate was issued to 'nobody'"):
        revoke(ca, "nobody")


def test_existing_ca_and_bundles_are_never_overwritten(study):
    with pytest.raises(ConfigError, match="already exists"):
        init_study_ca(study / "ca", "heart")
    with pytest.raises(ConfigError, match="already exists"):
        issue_bundle(study / "ca", "cleveland", study / "cleveland", "site")


@pytest.mark.parametrize("name", ["", "../etc", "a b", ".hidden", "x" * 65])
def test_unsafe_names_are_refused(study, tmp_path, name):
    with pytest.raises(ConfigError, match="not allowed"):
        issue_bundle(study / "ca", name, tmp_path / "b", "site")


def test_a_bundle_whose_key_was_swapped_is_refused(study, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(study / "cleveland", copy)
    (copy / "key.pem").write_bytes((study / "hungarian" / "key.pem").read_bytes())
    with pytest.raises(ConfigError, match=r"key\.pem does not belong to cert\.pem"):
        TlsBundle.load(copy)


def test_a_bundle_whose_signing_key_was_swapped_is_refused(study, tmp_path):
    import shutil

    from cryptography.hazmat.primitives import serialization

    copy = tmp_path / "bundle"
    shutil.copytree(study / "cleveland", copy)
    (copy / "signing.key").write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError, match=r"signing\.key does not match"):
        TlsBundle.load(copy)


def test_garbage_instead_of_a_certificate_is_a_protocol_error():
    with pytest.raises(ProtocolError, match=r"not a PEM X\.509 certificate"):
        identity_of(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")


def test_bundles_make_a_mutual_tls_grpc_call_and_the_server_reads_the_site_from_its_certificate(
    study,
):
    from concurrent import futures

    grpc = pytest.importorskip("grpc")
    coord = TlsBundle.load(study / "coordinator")
    site = TlsBundle.load(study / "cleveland")
    seen: list[str] = []

    def echo(request: bytes, context) -> bytes:
        pem = context.auth_context()["x509_pem_cert"][0]
        seen.append(check_peer_certificate(pem, coord.ca_pem, set(), role="site"))
        return request

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "t.T", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
            )
        ]
    )
    credentials = grpc.ssl_server_credentials(
        [(coord.key_pem, coord.cert_pem)], root_certificates=coord.ca_pem, require_client_auth=True
    )
    port = server.add_secure_port("localhost:0", credentials)
    server.start()
    try:
        with grpc.secure_channel(
            f"localhost:{port}",
            grpc.ssl_channel_credentials(site.ca_pem, site.key_pem, site.cert_pem),
        ) as channel:
            assert channel.unary_unary("/t.T/Echo")(b"hello", timeout=10) == b"hello"
        with (
            grpc.secure_channel(
                f"localhost:{port}", grpc.ssl_channel_credentials(site.ca_pem)
            ) as anonymous,
            pytest.raises(grpc.RpcError),
        ):
            anonymous.unary_unary("/t.T/Echo")(b"hello", timeout=10)
    finally:
        server.stop(None)
    assert seen == ["cleveland"]


# -- `fedcare certs` as the coordinating centre types it ----------------------------------


def test_certs_cli_init_issue_revoke_list(tmp_path):
    from typer.testing import CliRunner

    from fedcare.cli.certs import app

    runner = CliRunner()
    ca = tmp_path / "ca"
    result = runner.invoke(app, ["init", "heart", "--ca-dir", str(ca)])
    assert result.exit_code == 0, result.output
    assert "keep it off the network" in result.output
    result = runner.invoke(
        app,
        [
            "issue",
            "coord",
            "--role",
            "coordinator",
            "--ca-dir",
            str(ca),
            "--out",
            str(tmp_path / "c"),
            "--host",
            "coord.example.org",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "coord.example.org" in result.output
    result = runner.invoke(app, ["issue", "va", "--ca-dir", str(ca), "--out", str(tmp_path / "va")])
    assert result.exit_code == 0, result.output
    assert TlsBundle.load(tmp_path / "va").role == "site"
    assert TlsBundle.load(tmp_path / "c").role == "coordinator"

    assert runner.invoke(app, ["revoke", "va", "--ca-dir", str(ca)]).exit_code == 0
    listing = runner.invoke(app, ["list", "--ca-dir", str(ca)])
    assert listing.exit_code == 0
    rows = {line.split()[1]: line for line in listing.output.splitlines() if line.startswith("│")}
    assert "revoked" in rows["va"]
    assert "valid" in rows["coord"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["issue", "va"], "study CA certificate"),
        (["issue", "../va"], "not allowed"),
        (["revoke", "va"], "missing"),
        (["list"], "no study CA here"),
    ],
)
def test_certs_cli_user_errors_exit_2_with_one_line(tmp_path, monkeypatch, args, message):
    from typer.testing import CliRunner

    from fedcare.cli.certs import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output


def test_a_hostile_revocation_list_is_a_clear_error_not_a_traceback(tmp_path):
    ca = init_study_ca(tmp_path / "ca", "s")
    (ca / "revoked.json").write_text('{"revoked": ' + "[" * 20_000 + "]" * 20_000 + "}")
    with pytest.raises(ConfigError, match=r"revoked\.json', line 1: nested more than"):
        load_revoked(ca)
