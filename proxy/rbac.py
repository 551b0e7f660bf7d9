"""Intentions plan -> Envoy RBAC rules (network filter for tcp, HTTP filter for L7).

Callers are identified by the URI SAN of their client certificate. A source is matched with a
regex that accepts any namespace and datacenter (as Consul does), because intentions name
services, not datacenters. The plan model is the core's `meshd.intentions.RBACPlan`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from envoy.config.rbac.v3 import rbac_pb2 as rbac
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.matcher.v3 import path_pb2, regex_pb2, string_pb2

from meshd.intentions import WILDCARD, RBACPlan, RBACRule
from meshd.spiffe import service_id_regex


def _regex(pattern: str) -> regex_pb2.RegexMatcher:
    # No engine field: `google_re2` is deprecated and RE2 is the default.
    return regex_pb2.RegexMatcher(regex=pattern)


def _string_matcher(kind: str, value: str) -> string_pb2.StringMatcher:
    if kind == "exact":
        return string_pb2.StringMatcher(exact=value)
    if kind == "prefix":
        return string_pb2.StringMatcher(prefix=value)
    if kind == "suffix":
        return string_pb2.StringMatcher(suffix=value)
    return string_pb2.StringMatcher(safe_regex=_regex(value))


def source_pattern(trust_domain: str, source: str) -> string_pb2.StringMatcher:
    """Matcher for a caller's SPIFFE id given an intention source ("*" = any service)."""
    service = None if source == WILDCARD else source
    return string_pb2.StringMatcher(safe_regex=_regex(service_id_regex(trust_domain, service)))


def _principal_for(trust_domain: str, source: str) -> rbac.Principal:
    return rbac.Principal(
        authenticated=rbac.Principal.Authenticated(
            principal_name=source_pattern(trust_domain, source)
        )
    )


def rule_principal(trust_domain: str, rule: RBACRule) -> rbac.Principal | None:
    """included-any AND NOT excluded-each; None when the rule names no source at all."""
    included = sorted(set(rule.sources_included))
    if not included:
        return None
    if WILDCARD in included:
        included = [WILDCARD]
    ids = [_principal_for(trust_domain, s) for s in included]
    inc = ids[0] if len(ids) == 1 else rbac.Principal(or_ids=rbac.Principal.Set(ids=ids))
    excluded = sorted(set(rule.sources_excluded))
    if not excluded:
        return inc
    nots = [rbac.Principal(not_id=_principal_for(trust_domain, s)) for s in excluded]
    return rbac.Principal(and_ids=rbac.Principal.Set(ids=[inc, *nots]))


# --- L7 permissions (Consul's IntentionPermission shape) ---------------------------------------


Permission = Mapping[str, Any]
"""One L7 permission as Consul JSON with canonical keys (`meshd.config_entries` folds HCL's
snake_case and any other spelling before an entry is stored, so no other shape reaches here)."""


def _fields(obj: Any, allowed: tuple[str, ...], what: str) -> Permission:
    """`obj` as a mapping of known keys only: a key this translator would not read is refused, so
    part of a policy is never silently ignored (an ignored path would widen an allow)."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{what} must be an object, got {obj!r}")
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise ValueError(f"{what} has unknown field(s) {unknown}; expected {list(allowed)}")
    return obj


def _header_rule(raw: Any) -> rbac.Permission:
    h = _fields(
        raw,
        ("Name", "Present", "Exact", "Prefix", "Suffix", "Regex", "Invert"),
        "L7 permission header",
    )
    name = h.get("Name")
    if not name:
        raise ValueError(f"L7 permission header without a Name: {h!r}")
    m = rc.HeaderMatcher(name=str(name).lower())
    if h.get("Present"):
        m.present_match = True
    else:
        for key, kind in (
            ("Exact", "exact"),
            ("Prefix", "prefix"),
            ("Suffix", "suffix"),
            ("Regex", "regex"),
        ):
            val = h.get(key)
            if val is not None:
                m.string_match.CopyFrom(_string_matcher(kind, str(val)))
                break
        else:
            raise ValueError(f"L7 permission header {name!r} has no match (Exact/Prefix/...)")
    if h.get("Invert"):
        m.invert_match = True
    return rbac.Permission(header=m)


def _and(rules: list[rbac.Permission]) -> rbac.Permission:
    if not rules:
        return rbac.Permission(any=True)
    if len(rules) == 1:
        return rules[0]
    return rbac.Permission(and_rules=rbac.Permission.Set(rules=rules))


def _or(rules: list[rbac.Permission]) -> rbac.Permission:
    return (
        rules[0] if len(rules) == 1 else rbac.Permission(or_rules=rbac.Permission.Set(rules=rules))
    )


def http_match(perm: Permission) -> rbac.Permission:
    """The request predicate of one permission (its Action is handled by the caller)."""
    perm = _fields(perm, ("Action", "HTTP"), "L7 permission")
    http = _fields(
        perm.get("HTTP") or {},
        ("PathExact", "PathPrefix", "PathRegex", "Methods", "Header"),
        "L7 permission HTTP",
    )
    parts: list[rbac.Permission] = []
    for key, kind in (
        ("PathExact", "exact"),
        ("PathPrefix", "prefix"),
        ("PathRegex", "regex"),
    ):
        val = http.get(key)
        if val is not None:
            parts.append(
                rbac.Permission(url_path=path_pb2.PathMatcher(path=_string_matcher(kind, str(val))))
            )
    methods = http.get("Methods") or []
    if methods:
        parts.append(
            _or(
                [
                    rbac.Permission(
                        header=rc.HeaderMatcher(
                            name=":method",
                            string_match=string_pb2.StringMatcher(exact=str(m).upper()),
                        )
                    )
                    for m in sorted(set(methods))
                ]
            )
        )
    for h in http.get("Header") or []:
        parts.append(_header_rule(h))
    return _and(parts)


def _action(perm: Permission) -> str:
    action = str(perm.get("Action") or "").lower()
    if action not in ("allow", "deny"):
        raise ValueError(f"L7 permission Action must be allow or deny, got {action!r}")
    return action


def ordered_permissions(perms: Iterable[Permission], effect: str) -> list[rbac.Permission]:
    """Permissions with action `effect`, each guarded against earlier opposite ones.

    Consul evaluates permissions first-match-wins; RBAC policies are an unordered OR, so
    permission i becomes `match_i AND NOT (any earlier permission of the other action)`.
    """
    out: list[rbac.Permission] = []
    earlier_other: list[rbac.Permission] = []
    for perm in perms:
        match = http_match(perm)
        if _action(perm) == effect:
            if earlier_other:
                match = _and([match, rbac.Permission(not_rule=_or(list(earlier_other)))])
            out.append(match)
        else:
            earlier_other.append(match)
    return out


def _check_mode(plan: RBACPlan) -> rbac.RBAC.Action.ValueType:
    mode = str(plan.mode).upper()
    if mode not in ("ALLOW", "DENY"):
        raise ValueError(f"RBAC plan mode must be ALLOW or DENY, got {plan.mode!r}")
    return rbac.RBAC.ALLOW if mode == "ALLOW" else rbac.RBAC.DENY


def build_rbac(plan: RBACPlan, trust_domain: str, *, l7: bool) -> rbac.RBAC:
    """Policies named in plan order so the output is byte-stable.

    In ALLOW mode a rule grants its L7 "allow" permissions; in DENY mode it refuses its "deny"
    ones. On a tcp listener L7 permissions cannot be checked, so such a rule fails closed:
    ignored in ALLOW mode, applied to the whole connection in DENY mode.
    """
    action = _check_mode(plan)
    effect = "allow" if action == rbac.RBAC.ALLOW else "deny"
    policies: dict[str, rbac.Policy] = {}
    for i, rule in enumerate(plan.rules):
        principal = rule_principal(trust_domain, rule)
        if principal is None:
            continue
        perms_in = rule.permissions
        if not perms_in:
            perms = [rbac.Permission(any=True)]
        elif l7:
            perms = ordered_permissions(perms_in, effect)
        elif effect == "deny":
            perms = [rbac.Permission(any=True)]
        else:
            perms = []
        if not perms:
            continue
        policies[f"meshd-intention-{i:04d}"] = rbac.Policy(
            principals=[principal], permissions=perms
        )
    out = rbac.RBAC(action=action)
    for name in sorted(policies):
        out.policies[name].CopyFrom(policies[name])
    return out


def deny_all() -> rbac.RBAC:
    """Filter-level default for HTTP listeners: the real plan rides on the route config, so a
    listener whose routes have not arrived refuses instead of letting everyone in."""
    return rbac.RBAC(action=rbac.RBAC.ALLOW)
