"""Curation: raw teaching videos to clean clips and instruction JSON, one module per step, wired on Ray Data."""
