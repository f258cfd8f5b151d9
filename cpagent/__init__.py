"""cpagent: the charger-side OCPP agent."""

__version__ = "0.1.0"
