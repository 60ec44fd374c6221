"""A Lightning classifier whose every hook maps to a line of a plain PyTorch loop (loop.py), proven equal to it."""
