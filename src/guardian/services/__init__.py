"""Service backends: Windows SCM/NSSM, systemd, and processes Guardian supervises.

``factory.build_backend`` picks and builds one from a target's config.
"""
