"""The embedded sample corpus: teaching videos rendered from real slides, with ground truth and data sets."""
