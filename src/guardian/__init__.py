"""Guardian: a self-healing watchdog for local AI-generation stacks."""

__version__ = "0.1.0"
