"""Shared library of the circuit tools: state store, locking, config, errors, output."""

VERSION = "0.1.0"
