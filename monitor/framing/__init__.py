"""Framing detection: the trigger registry, its model file, segmenting, embedding-side scoring."""
