"""HTTP only: parse and validate, call a use case, serialize. No SQL and no ONNX here."""
