"""The lab, beside the package and not shipped with it: loop.fit with lines moved, measured (the pitfalls,
`python -m lab`), and both loops' lines changed one at a time, each caught by the tests (`python -m lab.mutations`).

Run from the project's root; docs/pitfalls.md and docs/proof.md say more.
"""
