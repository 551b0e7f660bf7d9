"""Who may do what: Consul's policy authorizer over flat rules, plus the default policy.

Precedence is Consul's: an exact rule beats any prefix rule, the longest matching prefix beats
shorter ones, and among rules for the same name from several policies `deny` wins, then the
most permissive. Nothing matched -> the default policy (`allow` still never grants ACL
management, as Consul's allow-all). Compiled once per token and cached by the caller: a check is
a few dict lookups.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from meshd.acl.rules import SINGLE, Rule

MEMO_SIZE = 4096  # answers an authorizer remembers (it is shared by every request of a token)


class Access(enum.Enum):
    READ = "read"
    LIST = "list"
    WRITE = "write"


# what each stored policy grants
_GRANTS: dict[str, frozenset[Access]] = {
    "deny": frozenset(),
    "read": frozenset({Access.READ}),
    "list": frozenset({Access.READ, Access.LIST}),
    "write": frozenset(Access),
}
# merging the same name across policies: deny wins, then the most permissive
_RANK = {"read": 1, "list": 2, "write": 3, "deny": 4}


class PermissionDeniedError(Exception):
    """403 with Consul's text, which clients and tools match on."""

    def __init__(self, accessor: str, resource: str, access: Access, name: str = "") -> None:
        who = f"token with AccessorID '{accessor}'" if accessor else "provided token"
        on = f' on "{name}"' if name else ""
        super().__init__(
            f"Permission denied: {who} lacks permission '{resource}:{access.value}'{on}"
        )


def _merge(a: str, b: str) -> str:
    if not a:
        return b
    if not b:
        return a
    return a if _RANK[a] >= _RANK[b] else b


@dataclass
class _Table:
    """Exact and prefix grants of one resource kind."""

    exact: dict[str, str] = field(default_factory=dict)
    prefix: dict[str, str] = field(default_factory=dict)
    lengths: list[int] = field(default_factory=list)  # prefix lengths present, longest first

    def put(self, name: str, prefix: bool, policy: str) -> None:
        target = self.prefix if prefix else self.exact
        target[name] = _merge(target.get(name, ""), policy)

    def seal(self) -> None:
        self.lengths = sorted({len(p) for p in self.prefix}, reverse=True)

    def lookup(self, name: str) -> str | None:
        hit = self.exact.get(name)
        if hit is not None:
            return hit
        for n in self.lengths:
            if n <= len(name):
                hit = self.prefix.get(name[:n])
                if hit is not None:
                    return hit
        return None


class Authorizer:
    """Answers `allowed(resource, name, access)`; `check` raises Consul's 403 error."""

    def __init__(
        self,
        rules: Iterable[Rule] = (),
        default_allow: bool = False,
        management: bool = False,
        accessor: str = "",
    ) -> None:
        self.default_allow = default_allow
        self.management = management
        self.accessor = accessor
        # epoch seconds after which the token no longer works (None: never); the holders of a
        # cached authorizer (token cache, DNS view, xDS stream) compare it on each use
        self.expires_at: float | None = None
        self._single: dict[str, str] = {}
        self._tables: dict[str, _Table] = {}
        self._intentions = _Table()
        self._reads_all: dict[str, bool] = {}
        self._memo: dict[tuple[str, str, Access], bool] = {}  # `allowed` answers, bounded
        for r in rules:
            if r.resource in SINGLE:
                self._single[r.resource] = _merge(self._single.get(r.resource, ""), r.policy)
                continue
            if r.policy:
                self._tables.setdefault(r.resource, _Table()).put(r.name, r.prefix, r.policy)
            intentions = r.intentions or _implied(r.policy)
            if r.resource == "service" and intentions:
                self._intentions.put(r.name, r.prefix, intentions)
        for t in (*self._tables.values(), self._intentions):
            t.seal()

    def _policy(self, resource: str, name: str) -> str | None:
        if resource in SINGLE:
            hit = self._single.get(resource)
            if hit is None and resource == "mesh":  # Consul: mesh falls back to operator
                hit = self._single.get("operator")
            return hit
        if resource == "intention":
            return self._intentions.lookup(name)
        table = self._tables.get(resource)
        return table.lookup(name) if table is not None else None

    def allowed(self, resource: str, name: str, access: Access) -> bool:
        if self.management:
            return True
        key = (resource, name, access)
        known = self._memo.get(key)
        if known is None:
            policy = self._policy(resource, name)
            if policy is None:
                known = self.default_allow and resource != "acl"
            else:
                known = access in _GRANTS[policy]
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()  # many distinct names: start over rather than grow
            self._memo[key] = known
        return known

    def reads_all(self, resource: str) -> bool:
        """True when every name of `resource` is readable: lets a list answer skip filtering."""
        known = self._reads_all.get(resource)
        if known is None:
            known = self._reads_all[resource] = self._reads_everything(resource)
        return known

    def _reads_everything(self, resource: str) -> bool:
        if self.management:
            return True
        if resource in SINGLE:
            return self.allowed(resource, "", Access.READ)
        table = self._intentions if resource == "intention" else self._tables.get(resource)
        if table is None:
            return self.default_allow and resource != "acl"
        base = table.prefix.get("")
        covered = self.default_allow if base is None else Access.READ in _GRANTS[base]
        rows = [*table.exact.values(), *table.prefix.values()]
        return covered and all(Access.READ in _GRANTS[p] for p in rows)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def check(self, resource: str, name: str, access: Access) -> None:
        if not self.allowed(resource, name, access):
            raise PermissionDeniedError(self.accessor, resource, access, name)


def _implied(policy: str) -> str:
    """Consul: a service's read or write policy implies read on its intentions."""
    return "read" if policy in ("read", "write") else ("deny" if policy == "deny" else "")


MANAGEMENT = Authorizer(management=True)


def build_authorizer(
    rules: Iterable[Rule], default_policy: str = "deny", accessor: str = ""
) -> Authorizer:
    return Authorizer(rules, default_allow=default_policy == "allow", accessor=accessor)
