"""The operator logs in with every credential form a kubeconfig or a pod can give it, over TLS.

Each test starts a TLS endpoint (test CA, server certificate for 127.0.0.1) that authenticates
requests by client certificate or bearer token and forwards them to the emulator, logs the real
operator in through it and reconciles a FusionRun: its first Job is created and its status written.
"""
# ruff: noqa: F811

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from op_cluster import (
    DEPLOYMENTS,
    JOBS,
    Cluster,
    children,
    condition,
    create_run,
    example,
    operator_running,
    wait_for,
)
from op_emulator import emulator  # noqa: F401
from op_tls import Pki, tls_proxy

from kubefusion_operator import kube

pytestmark = pytest.mark.integration

OPERATOR = "kubefusion-operator"  # our client's User-Agent
KOPF = "kopf/"


def events(emulator, run: str) -> list[str]:
    """Messages of the Events kopf posted about a run."""
    return [e["message"] for e in emulator.live("v1/events", "ns1") if e["involvedObject"]["name"] == run]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_kubeconfig(path: Path, cluster: dict[str, Any], user: dict[str, Any]) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "tls", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "tls", "context": {"cluster": "tls", "user": "u", "namespace": "ns1"}}],
        "current-context": "tls",
    }
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def exec_plugin(tmp_path: Path, token: str) -> dict[str, Any]:
    script = tmp_path / "credential-plugin.py"
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": token, "expirationTimestamp": "2099-01-01T00:00:00Z"},
    }
    script.write_text(f"import json\nprint(json.dumps({credential!r}))\n", encoding="utf-8")
    return {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(script)],
            "interactiveMode": "Never",
        }
    }


async def reconcile_through(emulator, proxy, tmp_path: Path, kubeconfig: Path | None) -> None:
    async with operator_running(emulator, tmp_path, kubeconfig=kubeconfig):
        await create_run(emulator, example("quickstart"))
        await wait_for(lambda: children(emulator, JOBS) == ["quickstart-prepare"], what="the prepare Job")
        await wait_for(
            lambda: condition(emulator, "ns1", "quickstart", "Progressing") == "True", what="status"
        )


FORMS = {
    # name: (cluster, user, identity the endpoint saw)
    "embedded-ca-data+token": (
        lambda pki, t: {"certificate-authority-data": b64(pki.ca_pem)},
        lambda pki, t: {"token": "t-bearer"},
        "token:t-bearer",
    ),
    "ca-file+client-cert-files": (
        lambda pki, t: {"certificate-authority": str(pki.ca_file)},
        lambda pki, t: {"client-certificate": str(pki.client_cert), "client-key": str(pki.client_key)},
        "cert:kubefusion-operator",
    ),
    "client-cert-data": (
        lambda pki, t: {"certificate-authority-data": b64(pki.ca_pem)},
        lambda pki, t: {
            "client-certificate-data": b64(pki.client_cert_pem),
            "client-key-data": b64(pki.client_key_pem),
        },
        "cert:kubefusion-operator",
    ),
    "token-file": (
        lambda pki, t: {"certificate-authority": str(pki.ca_file)},
        lambda pki, t: {"tokenFile": str(_token_file(t, "t-file"))},
        "token:t-file",
    ),
    "exec-plugin": (
        lambda pki, t: {"certificate-authority-data": b64(pki.ca_pem)},
        lambda pki, t: exec_plugin(t, "t-exec"),
        "token:t-exec",
    ),
}


def _token_file(folder: Path, token: str) -> Path:
    path = folder / "token"
    path.write_text(token, encoding="utf-8")
    return path


@pytest.mark.parametrize("form", list(FORMS))
async def test_kubeconfig_credential_forms(emulator, tmp_path: Path, form: str) -> None:
    cluster, user, identity = FORMS[form]
    pki = Pki.create(tmp_path / "pki")
    async with tls_proxy(emulator, pki, tokens={"t-bearer", "t-file", "t-exec"}) as proxy:
        config = write_kubeconfig(
            tmp_path / "kubeconfig", {"server": proxy.url, **cluster(pki, tmp_path)}, user(pki, tmp_path)
        )
        await reconcile_through(emulator, proxy, tmp_path, config)
    assert proxy.identities(OPERATOR) == {identity}  # our own calls
    assert proxy.identities(KOPF) == {identity}  # kopf's watches and events
    assert not [s for s in proxy.seen if s[2] == 401]


async def test_in_cluster_service_account_with_token_rotation(emulator, tmp_path: Path, monkeypatch) -> None:
    pki = Pki.create(tmp_path / "pki")
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "ca.crt").write_bytes(pki.ca_pem)
    (account / "token").write_text("sa-token-1", encoding="utf-8")
    (account / "namespace").write_text("ns1", encoding="utf-8")
    monkeypatch.setattr(kube, "SERVICE_ACCOUNT_DIR", account)
    async with tls_proxy(emulator, pki, tokens={"sa-token-1"}) as proxy:
        host, port = proxy.url.removeprefix("https://").split(":")
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
        missing = tmp_path / "no-kubeconfig"  # in-cluster credentials win; no kubeconfig is read
        async with operator_running(emulator, tmp_path, kubeconfig=missing):
            await create_run(emulator, example("quickstart"))
            await wait_for(lambda: children(emulator, JOBS) == ["quickstart-prepare"], what="the prepare Job")
            # Rotate only once the first reconcile is over, its status written and its Event posted:
            # kopf posts Events from a queue of its own, and a post still queued at the rotation would
            # meet the old token first. kopf's re-login then hands our client the new token before it
            # ever sends the old one (handlers.login), and our client's 401 path would go untested.
            await wait_for(
                lambda: "stage prepare started" in events(emulator, "quickstart"), what="the first Event"
            )
            await wait_for(lambda: condition(emulator, "ns1", "quickstart", "Progressing") == "True")
            assert proxy.identities(OPERATOR) == {"token:sa-token-1"}
            # The kubelet rotates the projected token; the old one stops working.
            (account / "token").write_text("sa-token-2", encoding="utf-8")
            proxy.tokens = {"sa-token-2"}
            await Cluster(emulator).complete("quickstart-prepare")
            await wait_for(
                lambda: children(emulator, DEPLOYMENTS), what="the next stage, reconciled with the new token"
            )
            # kopf keeps its own copy of the token: its next post meets the 401 and it logs in again.
            await wait_for(
                lambda: "stage prepare succeeded" in events(emulator, "quickstart"), what="kopf's Event"
            )
    assert "token:sa-token-2" in proxy.identities(OPERATOR)
    # The old token was refused once, then the operator read the rotated one and carried on.
    assert ("anonymous", OPERATOR, 401) in proxy.seen
    assert proxy.refused(KOPF) and "token:sa-token-2" in proxy.identities(KOPF)  # kopf's re-login too


def test_missing_credentials_are_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nothing-here"))
    with pytest.raises(Exception, match=r"(?i)kube-?config|configuration"):
        kube.load_configuration()
