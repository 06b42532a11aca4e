"""Data: instruction/test record schemas, video reading and frame sampling, datasets, the sample corpus."""
