"""Intention semantics: precedence, the legacy flattened view, L4 checks and the RBAC plan.

Pure logic over already-normalised `service-intentions` entries (see `meshd.config_entries`),
so the HTTP API, the xDS generator and the tests all share one definition of "who may connect".
Namespaces are fixed to "default" (Consul Enterprise adds them), which keeps Consul's
precedence numbers but only the four rows of the table that involve the default namespace.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "WILDCARD",
    "Decision",
    "Intention",
    "RBACPlan",
    "RBACRule",
    "check",
    "covering_rules",
    "evaluate_plan",
    "flatten",
    "intention_id",
    "match",
    "precedence",
    "rbac_for_destination",
    "sort_key",
]

WILDCARD = "*"
DEFAULT_NS = "default"
# Fixed namespace for uuid5: every server derives the same ID for the same pair, so a legacy
# client that lists on one server can DELETE /v1/connect/intentions/<id> on another.
_ID_NAMESPACE = uuid.UUID("6d657368-642d-4978-8e00-696e74656e74")
_ACTION_RANK = {"deny": 0, "": 1, "allow": 2}  # ties: deny, then L7 (deny at L4), then allow


def precedence(source: str, destination: str) -> int:
    """Consul's `computeIntentionPrecedence` restricted to the default namespace.

    An exact destination starts at 9 and a wildcard one at 6; a wildcard source costs one
    point. So exact->exact 9, *->exact 8, exact->* 6, *->* 5: the destination's specificity
    dominates, which is why `* -> api` outranks `web -> *`.
    """
    top = 6 if destination == WILDCARD else 9
    return top - (1 if source == WILDCARD else 0)


def intention_id(source: str, destination: str) -> str:
    """Deterministic ID for an intention that has no LegacyID (config-entry managed)."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{source}->{destination}"))


@dataclass(frozen=True)
class Intention:
    """One (source, destination) pair, the shape of Consul's legacy intentions API.

    `Action` is "" for an L7 intention, whose behaviour lives in `Permissions` instead.
    """

    ID: str
    SourceName: str
    DestinationName: str
    SourceNS: str = DEFAULT_NS
    DestinationNS: str = DEFAULT_NS
    Action: str = ""
    Permissions: tuple[dict[str, Any], ...] = ()
    Precedence: int = 0
    Description: str = ""
    Meta: dict[str, str] = field(default_factory=dict)
    CreateIndex: int = 0
    ModifyIndex: int = 0

    @property
    def is_l7(self) -> bool:
        return bool(self.Permissions)

    def to_api(self) -> dict[str, Any]:
        """The `/v1/connect/intentions` JSON object (Consul omits empty Permissions and, for
        L7 intentions, the empty Action)."""
        out: dict[str, Any] = {
            "ID": self.ID,
            "Description": self.Description,
            "SourceNS": self.SourceNS,
            "SourceName": self.SourceName,
            "DestinationNS": self.DestinationNS,
            "DestinationName": self.DestinationName,
            "SourceType": "consul",
        }
        if self.Permissions:
            out["Permissions"] = [dict(p) for p in self.Permissions]
        else:
            out["Action"] = self.Action
        out.update(
            Precedence=self.Precedence,
            Meta=dict(self.Meta),
            CreateIndex=self.CreateIndex,
            ModifyIndex=self.ModifyIndex,
        )
        return out


def sort_key(ixn: Intention) -> tuple[int, str, str, int]:
    """Evaluation order: precedence desc, then Consul's lexical tie-break on (src, dst).

    Two intentions only tie on all of that when the same pair was defined twice (e.g. two
    entries for one destination); then deny sorts first so the stricter rule wins.
    """
    return (-ixn.Precedence, ixn.SourceName, ixn.DestinationName, _ACTION_RANK.get(ixn.Action, 1))


def flatten(entries: Iterable[dict[str, Any]]) -> list[Intention]:
    """Expand stored `service-intentions` entries into per-pair intentions, in evaluation order.

    Other kinds are skipped so callers can pass every stored entry. Precedence is recomputed
    rather than trusted. Meta follows Consul's `ToIntention`: the source's LegacyMeta for
    intentions created through the legacy API, otherwise the enclosing entry's Meta.
    """
    out: list[Intention] = []
    for entry in entries:
        if entry.get("Kind") != "service-intentions":
            continue
        dst = str(entry["Name"])
        for src in entry.get("Sources") or ():
            name = str(src["Name"])
            perms = tuple(src.get("Permissions") or ())
            legacy_id = str(src.get("LegacyID") or "")
            meta = src.get("LegacyMeta") if legacy_id else entry.get("Meta")
            out.append(
                Intention(
                    ID=legacy_id or intention_id(name, dst),
                    SourceName=name,
                    DestinationName=dst,
                    Action="" if perms else str(src.get("Action", "")),
                    Permissions=perms,
                    Precedence=precedence(name, dst),
                    Description=str(src.get("Description") or ""),
                    Meta=dict(meta or {}),
                    CreateIndex=int(entry.get("CreateIndex", 0)),
                    ModifyIndex=int(entry.get("ModifyIndex", 0)),
                )
            )
    out.sort(key=sort_key)
    return out


def match(
    intentions: Iterable[Intention], *, by: Literal["source", "destination"], name: str
) -> list[Intention]:
    """`GET /v1/connect/intentions/match?by=...&name=...`: every intention that would be
    consulted for `name` on that side (exact or wildcard), first-evaluated first."""
    if by not in ("source", "destination"):
        raise ValueError(f"by must be 'source' or 'destination', not {by!r}")
    attr = "SourceName" if by == "source" else "DestinationName"
    return sorted((i for i in intentions if getattr(i, attr) in (name, WILDCARD)), key=sort_key)


def _applicable(
    intentions: Iterable[Intention], source: str | None, destination: str
) -> list[Intention]:
    return sorted(
        (
            i
            for i in intentions
            if i.DestinationName in (destination, WILDCARD)
            and (source is None or i.SourceName in (source, WILDCARD))
        ),
        key=sort_key,
    )


@dataclass
class Decision:
    """Outcome of an L4 authorization; `intention` is None when the default policy decided."""

    allowed: bool
    reason: str
    intention: Intention | None
    has_permissions: bool = False


def check(
    intentions: Iterable[Intention],
    source: str,
    destination: str,
    default_allow: bool,
    *,
    allow_permissions: bool = False,
) -> Decision:
    """L4 decision for `source -> destination`: the first intention in precedence order wins.

    An L7 intention (one with Permissions) counts as **deny**, mirroring Consul: the
    `/v1/connect/intentions/check` docs state that intentions with Permissions are always
    treated as deny because that endpoint can only reason about L4, and Consul's
    `IntentionDecision` is called with `allowPermissions=false` by both `/check` and
    `/agent/connect/authorize`. `has_permissions` tells callers the real answer depends on
    the request; `allow_permissions=True` reproduces Consul's other call sites, which only
    need to know whether any traffic at all may flow. No match falls back to `default_allow`.
    """
    for ixn in _applicable(intentions, source, destination):
        label = f"{ixn.SourceName} => {ixn.DestinationName} (ID: {ixn.ID})"
        if ixn.is_l7:
            return Decision(
                allowed=allow_permissions,
                reason=f"Matched L7 intention {label}: request attributes are needed to decide",
                intention=ixn,
                has_permissions=True,
            )
        return Decision(
            allowed=ixn.Action == "allow",
            reason=f"Matched L4 intention {ixn.Action.upper()} {label}",
            intention=ixn,
        )
    policy = "allow" if default_allow else "deny"
    return Decision(default_allow, f"No matching intention; default policy is {policy}", None)


@dataclass
class RBACRule:
    """One row of an RBAC plan: the sources it covers and what it lets them do.

    Sources covered: any of `sources_included` ("*" = every service in the trust domain) and
    none of `sources_excluded`. `permissions` is None for a whole-connection (L4) rule, else the
    intention's ordered L7 permission list (Consul JSON), first match wins. The one model for
    both the agent that computes a plan and `meshd.proxy.rbac` that turns it into Envoy RBAC.
    """

    sources_included: list[str]
    sources_excluded: list[str] = field(default_factory=list)
    permissions: list[dict[str, Any]] | None = None

    def covers(self, source: str) -> bool:
        included = WILDCARD in self.sources_included or source in self.sources_included
        return included and source not in self.sources_excluded


@dataclass
class RBACPlan:
    """Envoy RBAC in intention terms. `mode` is the RBAC action applied to matching rules:
    "ALLOW" lets in only callers matching a rule (default deny), "DENY" refuses them (default
    allow)."""

    mode: Literal["ALLOW", "DENY"]
    rules: list[RBACRule] = field(default_factory=list)


def rbac_for_destination(
    intentions: Iterable[Intention],
    destination: str,
    default_allow: bool,
    *,
    http: bool = True,
) -> RBACPlan:
    """Turn the intentions governing `destination` into an order-free RBAC plan.

    Envoy's RBAC has one action per filter and ORs its policies, whereas intentions are
    first-match by precedence. Following Consul's `makeRBACRules`: default deny gives an
    ALLOW plan (an allow-list), default allow a DENY plan (a deny-list); rules whose action
    equals the default are dropped (the default already does that), and each rule excludes
    the sources of every higher-precedence rule it overlaps, *including dropped ones*. E.g.
    default allow + `* deny` + `web allow` -> DENY plan [`*` except `web`].

    After that the rules are pairwise disjoint, so ordering no longer matters and
    `evaluate_plan` (first match) equals `check()` for every source. Two refinements over
    Consul's generator, both so the plan agrees with `check()`:
      * only the highest-precedence intention per source name is kept (Consul does this);
      * once the wildcard source has been placed, lower rules are unreachable and omitted.
        Consul keeps them, so `* -> api deny` (8) plus `web -> * allow` (6) under default
        deny yields an Envoy allow for web although Consul's own /check says deny.

    Mapping to protos (done elsewhere): mode -> `RBAC.action`; each rule -> one `Policy` whose
    principal is `or_ids(included)` AND NOT each excluded SPIFFE ID ("*" -> any service in
    the trust domain). `permissions is None` -> `Permission(any=True)`. Otherwise (HTTP
    filter only) the intention's permissions are first-match with fall-through to the
    default: like Consul's `removePermissionPrecedence`, keep the permissions whose action
    equals `mode` (allow for ALLOW, deny for DENY), each AND NOT every earlier permission;
    if none remain, drop the policy (the exclusions elsewhere already account for it).

    With `http=False` (TCP destination, network filter) L7 intentions become plain deny
    rules, as Consul does when they reach a non-HTTP listener.
    """
    mode: Literal["ALLOW", "DENY"] = "DENY" if default_allow else "ALLOW"
    default_action = "allow" if default_allow else "deny"
    plan = RBACPlan(mode=mode)
    seen: set[str] = set()
    earlier: list[str] = []
    for ixn in _applicable(intentions, None, destination):
        if ixn.SourceName in seen:
            continue  # a lower-precedence rule for the same source never applies
        seen.add(ixn.SourceName)
        excluded = list(earlier) if ixn.SourceName == WILDCARD else []
        earlier.append(ixn.SourceName)
        if ixn.is_l7 and http:
            plan.rules.append(
                RBACRule([ixn.SourceName], excluded, [dict(p) for p in ixn.Permissions])
            )
        elif (ixn.Action if not ixn.is_l7 else "deny") != default_action:
            plan.rules.append(RBACRule([ixn.SourceName], excluded))
        if ixn.SourceName == WILDCARD:
            break  # everything below is shadowed by this wildcard rule
    return plan


def evaluate_plan(plan: RBACPlan, source: str) -> bool:
    """L4 outcome of `plan` for a connection from `source`, used to prove plans match `check`.

    A rule with permissions means "depends on the request"; at L4 that counts as deny, the
    same convention as `check()`. No matching rule means the opposite of the plan's mode.
    """
    for rule in plan.rules:
        if rule.covers(source):
            if rule.permissions:
                return False
            return plan.mode == "ALLOW"
    return plan.mode == "DENY"


def covering_rules(plan: RBACPlan, source: str) -> Sequence[RBACRule]:
    """All rules that cover `source`; at most one for a well-formed (disjoint) plan."""
    return [r for r in plan.rules if r.covers(source)]
