"""The shipped function bundles (one folder each: `function.yaml` + `handler.py`), their workflows
(`workflows/`) and the demo stack (`stack.yaml`), installed with the package as data.

Bundles are uploaded to the gateway and run by its workers; the one module imported as code is
`layers.py`, the building blocks several handlers share (`gpufaas.functions.layers`). Code finds this
folder through `gpufaas.platform.shipped.functions_dir()`.
"""
