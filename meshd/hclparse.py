"""HCL documents (pyhcl), mended for pyhcl 0.4.5's one known fault.

pyhcl mixes up the fields of blocks repeated at the top level (a second `service {}` lends its
keys to the first) but parses the same blocks right one level down. A document with repeated
top-level blocks is therefore parsed again inside a wrapper block. Config files, service
definitions and config entries all go through here.
"""

from __future__ import annotations

from typing import Any

_WRAPPER = "__meshd_root"


def parse_hcl(text: str) -> Any:
    """Raises ValueError (pyhcl's lexer and parser errors) on malformed input."""
    import hcl  # imported here: commands that never read HCL do not pay for it

    data = hcl.loads(text)
    repeated = isinstance(data, dict) and any(isinstance(v, list) for v in data.values())
    if repeated and not text.lstrip().startswith("{"):  # JSON has no blocks to mend
        data = hcl.loads(f"{_WRAPPER} {{\n{text}\n}}").get(_WRAPPER, data)
    return data
