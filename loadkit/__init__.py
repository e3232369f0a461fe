"""loadkit: a load-testing harness for the Anthropic Messages API, with an offline emulator."""

__version__ = "0.1.0"
