"""Names of the in-tree policies, in one place (the K8s `plugins/names` habit)."""

ESG = "esg"
ORACLE = "oracle"
INFLESS = "infless"
FASTGSHARE = "fastgshare"
STATIC = "static"
BATCH1_WHOLEGPU = "batch1-wholegpu"
PER_REQUEST = "per-request"
