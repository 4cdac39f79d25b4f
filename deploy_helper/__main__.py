"""``python -m deploy_helper`` runs the CLI."""

from deploy_helper.cli import main

main()
