"""vidrip: pathology teaching videos to a video-language model, on Ray.

Research use only, not for clinical decisions. Importing this package does no work: no files are
read, no clients are built, nothing is contacted.
"""

__version__ = "0.1.0"
