"""Moved to :mod:`fedcare.privacy.client_level` (shared with the deployed coordinator)."""

from fedcare.privacy.client_level import PrivateRounds as PrivateRounds
