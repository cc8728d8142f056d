"""The sequence-length page: runs that differ in K (and layout, timestep embedding, DeMa vs DT)."""
