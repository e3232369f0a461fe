"""An emulator of the Anthropic Messages API: ground truth for loadkit, and an offline target.

This package imports nothing from the harness (only the leaf ``loadkit.distributions``).
"""
