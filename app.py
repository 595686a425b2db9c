#!/usr/bin/env python3
"""crossfleet CDK app: read the validated config, build one stack per configured US region."""

import sys
from pathlib import Path

from aws_cdk import App

from crossfleet.config import ConfigError, load_from_context
from stacks.app_builder import build_app

app = App()
try:
    config = load_from_context(app.node.try_get_context, Path(__file__).parent)
except ConfigError as error:
    # One line a person can act on; a stack trace would bury it.
    print(error, file=sys.stderr)
    sys.exit(1)
build_app(app, config)
app.synth()
