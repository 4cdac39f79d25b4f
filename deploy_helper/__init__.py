"""deploy-helper: a central permission broker for multi-account AWS CI/CD."""

__version__ = "0.1.0"
#: Identifies this product in statement ids, grant names and session names.
PRODUCT_PREFIX = "DeployHelper"
