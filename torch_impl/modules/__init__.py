"""Network building blocks: RepVGG/QARepVGG/CSLA/HyperSearch/target blocks, OABN, the model registry, deploy fusion, and bridges to the reference."""
