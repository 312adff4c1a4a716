"""Video: reader, the seven formats as data, writer, and the streaming pipeline."""
