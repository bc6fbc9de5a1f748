"""The routing configuration in force: catalog, policy, classifier rules, deployments.

Requests read `Runtime.current`, an immutable snapshot, once at their start; a reload
builds a complete new snapshot and swaps the reference, so a request never sees half of
an old policy and half of a new one, and a bad file leaves the running snapshot as it is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Callable, Mapping

from .catalog import Catalog, Model, default_catalog_path, load_catalog
from .classify import ClassifierRules, compile_rules
from .config import GatewayConfig
from .policy import Policy, default_policy_path, load_policy
from .providers.base import Deployment

log = logging.getLogger("gateway.runtime")


@dataclass(frozen=True)
class RoutingSnapshot:
    catalog: Catalog
    policy: Policy
    rules: ClassifierRules
    deployments: Mapping[str, Deployment]  # "provider/model" -> how to call it

    @cached_property
    def policy_version(self) -> str:
        return self.policy.version_tag


class ReloadError(Exception):
    pass


def build_snapshot(config: GatewayConfig, env: Mapping[str, str]) -> RoutingSnapshot:
    catalog = load_catalog(config.catalog_path or default_catalog_path())
    policy = load_policy(config.policy_path or default_policy_path(), catalog)
    try:
        rules = compile_rules(dict(policy.classifier_rules))
    except ValueError as exc:
        raise ReloadError(f"{config.policy_path or default_policy_path()}: classifier: {exc}") from None
    deployments = {model.key: _deployment(catalog, model, config, env) for model in catalog.models}
    return RoutingSnapshot(catalog, policy, rules, deployments)


def _deployment(catalog: Catalog, model: Model, config: GatewayConfig, env: Mapping[str, str]) -> Deployment:
    """The catalog's deployment, with the gateway config's per-provider overrides on top."""
    deployment = replace(catalog.deployment(model, env), context_window=model.context_window)
    override = config.providers.get(model.provider)
    if override is None:
        return deployment
    return replace(
        deployment,
        base_url=(override.base_url or deployment.base_url).rstrip("/"),
        api_key=override.api_key or deployment.api_key,
    )


class Runtime:
    def __init__(self, config: GatewayConfig, env: Mapping[str, str]) -> None:
        self._config = config
        self._env = env
        self.current = build_snapshot(config, env)
        self.on_reload: list[Callable[[RoutingSnapshot], None]] = []

    def reload(self) -> RoutingSnapshot:
        """Build a new snapshot from the files; on any error keep the running one and raise."""
        try:
            snapshot = build_snapshot(self._config, self._env)
        except Exception as exc:  # any failure to load leaves the running policy in place
            log.error("reload rejected, keeping policy %s: %s", self.current.policy_version, exc)
            raise ReloadError(str(exc)) from exc
        self.current = snapshot
        log.info("reloaded: policy %s", snapshot.policy_version)
        for callback in self.on_reload:
            callback(snapshot)
        return snapshot
