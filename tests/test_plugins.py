"""Plugins arrive through entry points; a third-party one is served and used like the rest."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

import faissx_client as fx
from faissx_core.errors import UnknownIndexType
from faissx_core.plugins import PluginRegistry

from .conftest import FAISSX
from .test_cli import run_cli

X = np.random.default_rng(3).standard_normal((300, 12)).astype("float32")


def test_builtin_families_come_from_the_entry_point_group():
    registry = PluginRegistry()
    assert registry.plugins["flat"].module == "faissx_plugins.flat"
    assert {"IndexFlatL2", "IndexFlatIP", "IndexFlat"} <= set(registry.types)
    assert registry.plugins["testrotated"].dist.startswith("faissx-testplugin")


def test_only_selected_plugins_are_enabled():
    registry = PluginRegistry(only=["flat"])
    assert "IndexTestRotatedFlat" not in registry.types
    with pytest.raises(UnknownIndexType, match="testrotated"):
        registry.index_type("IndexTestRotatedFlat")
    with pytest.raises(ValueError, match="unknown plugin"):
        PluginRegistry(only=["nope"])


def test_faissx_plugins_lists_plugins_and_their_types():
    out = run_cli(str(FAISSX), "plugins")
    assert out.returncode == 0, out.stderr
    for word in ("flat", "IndexFlatL2", "testrotated", "IndexTestRotatedFlat", "faissx-testplugin"):
        assert word in out.stdout


def test_third_party_type_remotely_and_locally(remote):
    remote_index = remote.IndexTestRotatedFlat(12)
    remote_index.add(X)
    Dr, Ir = remote_index.search(X[:5], 4)
    remote.disconnect()
    local_index = fx.IndexTestRotatedFlat(12)  # local mode: the plugin builds a real faiss object
    assert isinstance(local_index, faiss.Index)
    local_index.add(X)
    Dl, Il = local_index.search(X[:5], 4)
    np.testing.assert_array_equal(Ir, Il)
    np.testing.assert_array_equal(Dr, Dl)
    # a rotation keeps each vector nearest to itself
    np.testing.assert_allclose(Dr[:, 0], 0.0, atol=1e-4)
    np.testing.assert_array_equal(Ir[:, 0], np.arange(5))


def test_server_without_the_plugin_names_it(start_server):
    srv = start_server("--plugins", "flat")
    fx.configure(server=srv.endpoint)
    try:
        index = fx.IndexTestRotatedFlat(12)
        with pytest.raises(UnknownIndexType) as err:
            index.add(X)
        assert "testrotated" in str(err.value) and err.value.details["plugin"] == "testrotated"
        assert isinstance(err.value, ValueError)
        flat = fx.IndexFlatL2(12)
        flat.add(X)
        assert flat.ntotal == 300
    finally:
        fx.disconnect()


def test_constructor_arguments_are_validated_by_the_spec(remote):
    with pytest.raises(ValueError, match="metric"):
        remote.IndexFlat(8, 999)
    with pytest.raises(ValueError):
        remote.IndexFlatL2(-3)
    with pytest.raises(TypeError, match="at most"):
        remote.IndexFlatL2(8, 9)


def test_an_installed_authenticator_is_asked_before_the_builtin_key_store():
    """The server resolves ``faissx_authenticate`` once at start (``first_result``): with a
    plugin installed beside the key store, the plugin still answers first and a ``None`` from
    it still falls through to the key store; alone, the key store answers directly."""
    from faissx_core.hookspecs import hookimpl
    from faissx_core.server.auth import KeyStore
    from faissx_core.settings import ServerSettings
    from faissx_core.tenancy import DEFAULT_TENANT, Principal

    settings = ServerSettings()

    class Gate:
        @hookimpl
        def faissx_authenticate(self, api_key, tenant, settings):  # type: ignore[no-untyped-def]
            return Principal(tenant="gated") if api_key == "let-me-in" else None

    alone = PluginRegistry(only=["flat"])
    alone.manager.register(KeyStore(settings))
    direct = alone.first_result("faissx_authenticate")
    assert direct(api_key=None, tenant=None, settings=settings).tenant == DEFAULT_TENANT
    assert direct(api_key=None, tenant="acme", settings=settings).tenant == "acme"

    both = PluginRegistry(only=["flat"])
    both.manager.register(KeyStore(settings))
    both.manager.register(Gate())
    chained = both.first_result("faissx_authenticate")
    assert chained(api_key="let-me-in", tenant=None, settings=settings).tenant == "gated"
    assert chained(api_key=None, tenant=None, settings=settings).tenant == DEFAULT_TENANT
