"""Consul's builtin templated policies: a name and variables that expand to a synthetic policy.

The rule texts are Consul's (`builtin/service`, `builtin/node`, `builtin/dns`), byte for byte,
so `preview` shows what Consul shows and a token carries the same rights on either. The `name`
variable is spliced into HCL, so it must be a valid service or node identity name before any
expansion: a name holding a quote would otherwise add rules of its own.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from meshd.acl.model import ACLPolicy, ACLTemplatedPolicy, ACLTemplatedPolicyVariables

_NAME_SCHEMA = (
    '{\n\t"type": "object",\n\t"properties": {\n\t\t"name": { "type": "string", '
    '"$ref": "#/definitions/min-length-one" }\n\t},\n\t"required": ["name"],\n\t'
    '"definitions": {\n\t\t"min-length-one": {\n\t\t\t\t"type": "string",\n\t\t\t\t'
    '"minLength": 1\n\t\t}\n\t}\n}'
)
# Consul's IsValidServiceIdentityName / IsValidNodeIdentityName
IDENTITY_NAME = re.compile(r"^[a-z0-9]([a-z0-9\-_]*[a-z0-9])?$")


class TemplateError(ValueError):
    """A templated policy that cannot be expanded (unknown name, missing or bad variable)."""


@dataclass(frozen=True)
class Template:
    name: str
    template_id: str
    schema: str  # Consul's JSON schema text ("" = the template takes no variables)
    template: str  # the rules, with `{{.Name}}` where the name variable goes
    description: str

    @property
    def needs_name(self) -> bool:
        return bool(self.schema)


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template(
            "builtin/service",
            "00000000-0000-0000-0000-000000000003",
            _NAME_SCHEMA,
            '\nservice "{{.Name}}" {\n\tpolicy = "write"\n}\n'
            'service "{{.Name}}-sidecar-proxy" {\n\tpolicy = "write"\n}\n'
            'service_prefix "" {\n\tpolicy = "read"\n}\nnode_prefix "" {\n\tpolicy = "read"\n}',
            "Gives the token or role permissions to register a service and discover services "
            "in the Consul catalog. It also gives the specified service's sidecar proxy the "
            "permission to discover and route traffic to other services.",
        ),
        Template(
            "builtin/node",
            "00000000-0000-0000-0000-000000000004",
            _NAME_SCHEMA,
            '\nnode "{{.Name}}" {\n\tpolicy = "write"\n}\n'
            'service_prefix "" {\n\tpolicy = "read"\n}',
            "Gives the token or role permissions for a register an agent/node into the "
            "catalog. A node is typically a consul agent but can also be a physical server, "
            "cloud instance or a container.",
        ),
        Template(
            "builtin/dns",
            "00000000-0000-0000-0000-000000000005",
            "",
            '\nnode_prefix "" {\n\tpolicy = "read"\n}\n'
            'service_prefix "" {\n\tpolicy = "read"\n}\nquery_prefix "" {\n\tpolicy = "read"\n}',
            "Gives the token or role permissions for the Consul DNS to query services in the "
            "network.",
        ),
    )
}


def template(name: str) -> Template:
    found = TEMPLATES.get(name)
    if found is None:
        raise TemplateError(f"acl templated policy does not exist: {name}")
    return found


def check(tp: ACLTemplatedPolicy) -> None:
    """Refuse a templated policy that would not expand, with Consul's reason."""
    base = template(tp.TemplateName)
    name = tp.TemplateVariables.Name if tp.TemplateVariables is not None else ""
    if not base.needs_name:
        return
    if not name:
        raise TemplateError(
            f"validation error for templated policy {tp.TemplateName!r}: name is required"
        )
    if not IDENTITY_NAME.match(name):
        raise TemplateError(
            f"validation error for templated policy {tp.TemplateName!r}: name {name!r} is "
            "invalid (only lowercase alphanumeric characters, '-' and '_' are allowed)"
        )


def rules(tp: ACLTemplatedPolicy) -> str:
    """The rules text the templated policy stands for (checked first)."""
    check(tp)
    name = tp.TemplateVariables.Name if tp.TemplateVariables is not None else ""
    return template(tp.TemplateName).template.replace("{{.Name}}", name)


def synthetic_policy(tp: ACLTemplatedPolicy) -> ACLPolicy:
    """What `preview` answers: the policy a token with this templated policy is given."""
    text = rules(tp)
    digest = hashlib.sha256(text.encode()).hexdigest()[:32]
    return ACLPolicy(
        ID=digest,
        Name=f"synthetic-policy-{digest}",
        Description=f"synthetic policy generated from templated policy: {tp.TemplateName}",
        Rules=text,
        Datacenters=list(tp.Datacenters),
    )


def variables_from_json(value: Any) -> ACLTemplatedPolicyVariables | None:
    """Go decodes `{"Name": ..}` and `{"name": ..}` alike; so does meshd."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TemplateError("TemplateVariables must be an object")
    name = next((v for k, v in value.items() if k.lower() == "name"), "")
    if not isinstance(name, str):
        raise TemplateError("TemplateVariables.Name must be a string")
    return ACLTemplatedPolicyVariables(Name=name)


def from_json(value: Any) -> list[ACLTemplatedPolicy]:
    """The `TemplatedPolicies` field of a token or role body."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise TemplateError("TemplatedPolicies must be a list of objects")
    out = []
    for item in value:
        dcs = item.get("Datacenters") or []
        if not isinstance(dcs, list) or not all(isinstance(d, str) for d in dcs):
            raise TemplateError("TemplatedPolicies.Datacenters must be a list of strings")
        out.append(
            ACLTemplatedPolicy(
                TemplateName=str(item.get("TemplateName") or ""),
                TemplateVariables=variables_from_json(item.get("TemplateVariables")),
                Datacenters=list(dcs),
            )
        )
    return out
