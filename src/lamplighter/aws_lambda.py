"""The deployed name of the on-start Lambda handler: ``lamplighter.aws_lambda.handler``.

The function lives in :mod:`lamplighter.sagemaker.aws_lambda`; this name is kept so that stacks deployed
from ``deploy/sam/template.yaml`` (``Handler: lamplighter.aws_lambda.handler``) keep working.
"""

from __future__ import annotations

from lamplighter.sagemaker.aws_lambda import handler

__all__ = ["handler"]
