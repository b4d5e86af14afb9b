"""Destinations for notifications and records (storage and delivery arrive with later issues)."""
