"""python -m lab [--quick] [--out PATH]: the pitfalls lab, lab/pitfalls.py."""

from lab.pitfalls import main

main()
