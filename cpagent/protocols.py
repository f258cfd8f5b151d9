"""The OCPP versions this build speaks, each found by its version string.

The shell never names an adapter's class: it asks this registry, which imports the adapter's
module by name. Adding a version means adding an adapter package and a line here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cpagent.host import AdapterHost, ProtocolAdapter

_ADAPTERS = {
    "1.6": "cpagent.ocpp16.adapter:Ocpp16Adapter",
    "2.0.1": "cpagent.ocpp201.adapter:Ocpp201Adapter",
}
SUBPROTOCOLS = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1"}
VERSIONS = tuple(_ADAPTERS)
PREFERRED = ("2.0.1", "1.6")  # what `auto` offers first when nothing was agreed before


def adapter_for(version: str, host: AdapterHost) -> ProtocolAdapter:
    try:
        module_name, class_name = _ADAPTERS[version].split(":")
    except KeyError:
        raise ValueError(f"no adapter for OCPP {version!r} (this build has "
                         f"{', '.join(VERSIONS)})") from None
    adapter_class = getattr(importlib.import_module(module_name), class_name)
    return adapter_class(host)
