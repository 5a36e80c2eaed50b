"""Test-only plugin modules, loaded through $PLANFORGE_PLUGINS (workflow_scripts/core/registry.py)."""
