"""A small network written the "Deep Learning from Scratch" way (cybn's own example code)."""
