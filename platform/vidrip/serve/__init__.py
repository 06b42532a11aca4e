"""Serving: an OpenAI-compatible endpoint on Ray Serve that takes videos (research use only)."""
