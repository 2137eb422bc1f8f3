"""Numbers and messages shared by every layer (numpy only)."""
