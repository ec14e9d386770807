"""Identifying an image: decoding and limits (imaging), the ONNX model (encoder, manifest),
micro-batching, the embedding cache, and identify, the one owner of "identify this image".

May import: settings, errors, metrics, storage, submissions, catalog.repository."""
