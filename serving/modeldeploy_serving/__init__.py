"""The generic model server: Open Inference Protocol (V2) and KServe V1, with Prometheus metrics."""
