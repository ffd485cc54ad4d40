"""The bottom layer: the vocabulary that the reference, the torch implementation and the
applications share (standard library only; imports nothing of repspec's other layers).

- :mod:`.vocabulary`: every name table (calibrators, identity modes, k-means inits, …);
- :mod:`.architectures`: the model registry as plain data (SPEC §3 "Architectures");
- :mod:`.outputs`: the output rule (what repspec may replace);
- :mod:`.runtime`: what changes the bits of a run, recorded with every result;
- :mod:`.version`: the version string.
"""
