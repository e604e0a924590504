"""On-call triage: flagged-events topic, incidents, emerging framings, registry edits, the UI."""
