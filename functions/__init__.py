"""The shipped function bundles (one folder each: `function.yaml` + `handler.py`), their workflows
(`workflows/`) and the demo stack (`stack.yaml`), installed with the package as data.

Nothing here is imported as code: bundles are uploaded to the gateway and run by its workers. Code
finds this folder through `gpufaas.platform.shipped.functions_dir()`.
"""
