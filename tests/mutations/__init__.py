"""Mutation testing: break pyhv on purpose, one small change at a time, and check that the
tests meant to guard each feature fail.

``catalog.py`` lists the mutations (one entry per change, with the feature it breaks and the
tests that must catch it); ``python -m tests.mutations.run`` applies each one to a scratch copy
of the tree (never to the working tree), rebuilds the C core when the change is in ``csrc/``,
runs those tests and prints the caught/escaped table.  See docs/testing.md.
"""
