"""The arq worker: sends queued messages through Twilio, reconciles lost work, syncs from Twilio."""
