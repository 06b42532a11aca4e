"""Training: the four stages as data, what trains in each, and the loop on Ray Train."""
