"""Entry points other than ``deploy_helper.handler``: custom resources, the function URL, the checkpointer."""
