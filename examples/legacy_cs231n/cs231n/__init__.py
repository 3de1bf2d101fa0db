"""A small network written the cs231n assignment-2 way (cybn's own example code)."""
