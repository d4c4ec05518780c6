"""The bundle contract, shared by `seqcast.export` (which writes bundles) and `seqcast.server`
(which serves them); it imports neither.

- `manifest`: the manifest's schema (what a bundle declares about itself).
- `loading`: reading a bundle with every file checked against its sha256.
- `runtime`: the ONNX Runtime sessions of a bundle's encoder and decoder step.
- `text`, `scaling`: the tokenizer codec and the forecast scaler a manifest names.
- `strategies`, `decoding`: the KV-cached decoding loop (greedy, beam, sampling, forecasts), in
  numpy, which the server's scheduler drives and export uses to check parity and quality.
"""
