"""One module per image format. Each has ``probe(image) -> bool`` (does the
data look like this format?) and ``load(memory, image) -> LoadResult``."""
